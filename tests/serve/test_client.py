"""examples/openai_client.py, the official `openai` client against a live loopback server: budgets
through `extra_body`, the `adallava` report, streaming, and errors as the client's exceptions."""

import importlib.util
import json
from pathlib import Path

import httpx
import openai
import pytest

from tests.serving import SCENE, chat_body, live_server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "openai_client.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("openai_client_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server():
    with live_server("tiny-adallava-l") as server:
        yield server


def _run(example, server, capsys, *args) -> dict:
    question = "what color is the circle ?"
    argv = ["--base-url", server.url + "/v1", "--image", str(SCENE), "--question", question, "--json", *args]
    assert example.main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_the_example_sends_a_budget_and_reads_the_report(example, server, capsys):
    result = _run(example, server, capsys, "--budget", "0.75", "--max-tokens", "6")
    direct = httpx.post(
        server.url + "/v1/chat/completions", json=chat_body("what color is the circle ?", 0.75), timeout=30
    ).json()
    assert result["answer"] == direct["choices"][0]["message"]["content"]
    assert result["finish_reason"] == direct["choices"][0]["finish_reason"]
    assert result["adallava"]["budget"] == 0.75
    assert result["adallava"]["plan"] == direct["adallava"]["plan"]


def test_the_example_streams_the_same_answer(example, server, capsys):
    plain = _run(example, server, capsys, "--budget", "130M", "--max-tokens", "6")
    streamed = _run(example, server, capsys, "--budget", "130M", "--max-tokens", "6", "--stream")
    assert streamed["answer"] == plain["answer"]
    assert streamed["adallava"]["plan"] == plain["adallava"]["plan"]
    assert streamed["adallava"]["budget"] == plain["adallava"]["budget"] < 1.0


def test_the_readable_output(example, server, capsys):
    question = "how many shapes are there ?"
    argv = [
        "--base-url",
        server.url + "/v1",
        "--image",
        str(SCENE),
        "--question",
        question,
        "--budget",
        "0.5",
    ]
    assert example.main(argv) == 0
    out = capsys.readouterr().out
    assert "answer:" in out and "████····" in out and "prefill FLOPs (LLM)" in out


def test_server_errors_reach_the_client_as_openai_exceptions(example, server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        example.ask(client, "tiny-adallava-l", SCENE, "what shape ?", budget=0.2)
    assert raised.value.status_code == 400 and "[0.5, 1]" in raised.value.message
    with pytest.raises(openai.NotFoundError):
        example.ask(client, "gpt-4o", SCENE, "what shape ?", budget=0.6)
