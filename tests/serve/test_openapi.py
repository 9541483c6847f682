"""A bounded schemathesis run against the live server's /openapi.json (issue 17): requests generated
from the document (valid ones and, for the chat route, invalid ones) must get no 5xx, only documented
statuses and content types, and bodies that match the documented schemas.

This is the CI-sized run (derandomized, 20 valid and 20 invalid chat requests, about 3 s); docs/serving.md
quotes a longer one made with the `schemathesis` command."""

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.serving import chat_body, live_server

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 20}


def test_the_server_answers_as_its_openapi_document_says():
    # Bugs caught: 500s on JSON edge cases; statuses (413, 415, 429, 504, ...) and the chat request body
    # missing from the document; an event stream declared with no event schema.
    with live_server("tiny-adallava-l", max_tokens_limit=8) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} == {"/health", "/v1/models", "/metrics", "/v1/chat/completions"}
        for operation in operations:
            modes = EXAMPLES if operation.method.upper() == "POST" else {GenerationMode.POSITIVE: 3}
            for mode, examples in modes.items():

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=examples,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                def conforms(case):
                    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)

                conforms()
        # Requests the generator reaches only by luck: a valid streamed answer, a valid plain one.
        [chat] = [op for op in operations if op.method.upper() == "POST"]
        for body in (chat_body(stream=True, max_tokens=3), chat_body(budget=0.6), {"messages": []}):
            chat.Case(body=body, media_type="application/json").call_and_validate(
                base_url=server.url, checks=CHECKS, timeout=30
            )
