"""`adallava serve --speculative`: answers (plain and streamed) equal the library's plain answers, each
report and /metrics count drafted and accepted tokens, and models or settings it cannot serve are
refused at startup naming the flag."""

import json

import httpx
import pytest
from PIL import Image

from adallava.eval.runner import load_model
from adallava.inference.answering import answer_batch, encode
from adallava.inference.prompts import chat_prompt
from adallava.serve import Settings, create_app
from tests.serving import QUESTIONS, SCENE, chat_body, live_server

CAPTION = "List the objects in the image."


@pytest.fixture(scope="module")
def server():
    with live_server("tiny-adallava-l", speculative=True, speculative_draft_tokens=3) as server:
        yield server


def plain_answer(server, question: str, budget: float, max_tokens: int):
    served = server.app.state.served
    scene = Image.open(SCENE).convert("RGB")
    prompt = encode(served.processor, chat_prompt(served.processor, question), [scene])
    [answer] = answer_batch(served.model, served.processor, [prompt], [budget], [max_tokens])
    return answer


def samples(client) -> dict[str, float]:
    text = client.get("/metrics").text
    lines = [line.rsplit(" ", 1) for line in text.splitlines() if line[:1] not in "#"]
    return {name: float(value) for name, value in lines}


def test_answers_equal_plain_decoding_and_acceptance_is_reported(server):
    """Catches: a speculative server answering differently from plain decoding (plain or streamed), or
    its acceptance missing from the report and the metrics."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/v1/models").json()["data"][0]["adallava"]["speculative"] is True
        before = samples(client)
        body = client.post("/v1/chat/completions", json=chat_body(CAPTION, budget=1.0, max_tokens=20)).json()
        alone = plain_answer(server, CAPTION, 1.0, 20)
        assert body["choices"][0]["message"]["content"] == alone.text
        assert body["adallava"]["decode_flops"] == alone.decode_flops  # the tokens' cost at the verify plan
        report = body["adallava"]["speculative"]
        assert 0 < report["accepted"] <= report["drafted"]
        after = samples(client)
        drafted = after["adallava_speculative_draft_tokens_total"] - before.get(
            "adallava_speculative_draft_tokens_total", 0
        )
        accepted = after["adallava_speculative_accepted_tokens_total"] - before.get(
            "adallava_speculative_accepted_tokens_total", 0
        )
        assert (drafted, accepted) == (report["drafted"], report["accepted"])
        assert after["adallava_speculative_acceptance_count"] >= 1
        streamed = chat_body(QUESTIONS[1], budget=0.75, max_tokens=8, stream=True)
        with client.stream("POST", "/v1/chat/completions", json=streamed) as response:
            lines = [line for line in response.iter_lines() if line and line != "data: [DONE]"]
        chunks = [json.loads(line[len("data: ") :]) for line in lines]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == plain_answer(server, QUESTIONS[1], 0.75, 8).text


def test_models_and_settings_it_cannot_serve_are_refused_at_startup():
    """Catches: a head-switch model (or a draft budget below its prefix) accepted with --speculative and
    then failing every request."""
    model, processor, adaptive = load_model("tiny-adallava-h")
    with pytest.raises(ValueError, match="--speculative cannot serve this model.*head"):
        create_app(model, processor, Settings(speculative=True), adaptive=adaptive)
    model, processor, adaptive = load_model("tiny-adallava-l")
    with pytest.raises(ValueError, match=r"--speculative-draft-budget must be in \[0.5, 1\]"):
        settings = Settings(speculative=True, speculative_draft_budget=0.3)
        create_app(model, processor, settings, adaptive=adaptive)
    with pytest.raises(ValueError, match="speculative_draft_budget"):
        Settings(speculative=True, speculative_draft_budget=1.5)
    assert Settings(speculative=False).speculative is False  # a flag that is off is not "not positive"
