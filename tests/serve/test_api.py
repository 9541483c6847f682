"""`adallava serve`'s HTTP API on a live loopback server: every endpoint, streaming, and every refusal
(400 / 404 / 413) with an OpenAI-style error body. Answers are compared with the library, never with
fixed strings (the bundled models may be retrained)."""

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from adallava.inference.answering import answer_batch, encode
from adallava.inference.prompts import chat_prompt
from tests.serving import QUESTIONS, SCENE, chat_body, data_url, live_server, wait_until

JSON = {"content-type": "application/json"}
LIMITS = {
    "max_image_bytes": 100_000,
    "max_image_pixels": 1_000_000,
    "max_request_bytes": 600_000,
    "max_processed_pixels": 3 * 96 * 96,  # the processor scales the short side to 96
}


@pytest.fixture(scope="module")
def server():
    with live_server("tiny-adallava-l", **LIMITS) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def post(client, body):
    return client.post("/v1/chat/completions", json=body)


def test_health_and_models(client):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    [entry] = models["data"]
    assert entry["id"] == "tiny-adallava-l" and entry["object"] == "model"
    info = entry["adallava"]
    assert info["adaptive"] is True and info["switches"] == "layer"
    assert info["num_layers"] == 16 and info["num_prefix_layers"] == 8 and info["min_budget"] == 0.5


def test_completion_reports_answer_plan_flops_and_times(server, client):
    response = post(client, chat_body(budget=0.75, model="tiny-adallava-l"))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny-adallava-l"
    assert body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 6
    report = body["adallava"]
    assert report["budget"] == 0.75 and report["batch_size"] == 1
    assert report["plan"]["num_layers"] == 16 and len(report["plan"]["layers"]) == 12
    assert report["plan"]["layers"][:8] == list(range(8))  # the prefix always runs
    assert report["prefill_flops"]["llm"] == pytest.approx(0.75 * report["full_prefill_flops"]["llm"])
    assert report["prefill_flops"]["total"] > report["prefill_flops"]["llm"]
    assert report["decode_flops"]["llm"] > 0  # the answer and its end token: at least one decode step
    for key in ("queue_ms", "prefill_ms", "decode_ms"):
        assert report[key] >= 0
    # The engine's own times of its generate call, beside the server's view of the row.
    engine = [report[f"generate_{part}_ms"] for part in ("prefill", "decode", "total")]
    assert all(ms is not None and ms >= 0 for ms in engine) and engine[2] >= engine[0], engine
    # The server is thin: its answer is the library's answer for the same request.
    served = server.app.state.served
    prompt = encode(
        served.processor, chat_prompt(served.processor, QUESTIONS[0]), [Image.open(SCENE).convert("RGB")]
    )
    [alone] = answer_batch(served.model, served.processor, [prompt], [0.75], [6])
    assert choice["message"]["content"] == alone.text
    assert report["plan"] == alone.plan and report["decode_flops"] == alone.decode_flops
    assert usage["prompt_tokens"] == alone.prompt_tokens


def test_budget_defaults_to_the_full_model_and_accepts_flops_caps(client):
    full = post(client, chat_body()).json()["adallava"]
    assert full["budget"] == 1.0 and full["plan"]["layers"] == list(range(16))
    cap = 0.8 * full["full_prefill_flops"]["llm"]
    capped = post(client, chat_body(budget=f"{cap / 1e6:.3f}M")).json()["adallava"]
    assert capped["prefill_flops"]["llm"] <= cap
    assert capped["budget"] == pytest.approx(cap / capped["full_prefill_flops"]["llm"], rel=1e-3)
    as_number = post(client, chat_body(budget=cap)).json()["adallava"]  # a number above 1 is a cap too
    assert as_number["budget"] == pytest.approx(capped["budget"], rel=1e-3)
    as_text = post(client, chat_body(budget="0.75")).json()["adallava"]
    assert as_text["budget"] == 0.75  # a numeric string is a fraction, as on the command line


def test_streaming_sends_the_same_answer_in_chunks_then_the_report(client):
    plain = post(client, chat_body(QUESTIONS[1], budget=0.6)).json()
    body = chat_body(QUESTIONS[1], budget=0.6, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(final) == 1 and final[0]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    report = {k: v for k, v in final[0]["adallava"].items() if not k.endswith("_ms")}
    assert report == {k: v for k, v in plain["adallava"].items() if not k.endswith("_ms")}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_max_tokens_cuts_the_answer_and_its_decode_flops(client):
    long = post(client, chat_body(QUESTIONS[2], budget=1.0, max_tokens=8)).json()
    short = post(client, chat_body(QUESTIONS[2], budget=1.0, max_tokens=1)).json()
    assert short["usage"]["completion_tokens"] == 1
    assert short["adallava"]["decode_flops"]["llm"] == 0  # one token comes from the prefill
    assert long["adallava"]["decode_flops"]["llm"] >= short["adallava"]["decode_flops"]["llm"]
    if long["usage"]["completion_tokens"] > 1:
        assert short["choices"][0]["finish_reason"] == "length"


def _noise_png(size: int) -> str:
    pixels = (np.random.RandomState(0).rand(size, size, 3) * 255).astype("uint8")
    return data_url(Image.fromarray(pixels))


def _two_images() -> dict:
    body = chat_body()
    body["messages"][0]["content"].insert(0, {"type": "image_url", "image_url": {"url": data_url()}})
    return body


def _with_image(url: str) -> dict:
    return chat_body(image=url)


BAD_REQUESTS = {
    "budget below b_min": (chat_body(budget=0.3), 400, "invalid_budget", "[0.5, 1]"),
    "budget 1.5 is a 1.5-FLOPs cap": (chat_body(budget=1.5), 400, "invalid_budget", "minimum feasible cap"),
    "budget infinite": (chat_body(budget=float("inf")), 400, "invalid_budget", "finite"),
    "budget not a number": (chat_body(budget="fast"), 400, "invalid_budget", "not a FLOPs amount"),
    "budget a bool": (chat_body(budget=True), 400, "invalid_budget", "got True"),
    "budget NaN": (chat_body(budget=float("nan")), 400, "invalid_budget", "[0.5, 1]"),
    "flops cap below the prefix": (chat_body(budget="1K"), 400, "invalid_budget", "minimum feasible cap"),
    "no messages": ({"messages": []}, 400, "invalid_field", "messages"),
    "bad role": ({"messages": [{"role": "bot", "content": "hi"}]}, 400, "invalid_field", "messages.0.role"),
    "unknown part type": (
        {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
        400,
        "invalid_field",
        "messages.0.content.0",
    ),
    "image url without url": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        400,
        "invalid_field",
        "image_url.url",
    ),
    "max_tokens a string": (chat_body(max_tokens="5"), 400, "invalid_field", "max_tokens"),
    "max_tokens zero": (chat_body(max_tokens=0), 400, "invalid_request", "[1, 256]"),
    "max_tokens too many": (chat_body(max_tokens=10_000), 400, "invalid_request", "[1, 256]"),
    "n above 1": (chat_body(n=2), 400, "invalid_request", "n must be 1"),
    "stop sequences": (chat_body(stop=["."]), 400, "invalid_request", "stop sequences"),
    "http image url": (
        _with_image("https://example.com/cat.png"),
        400,
        "image_url_not_allowed",
        "does not fetch",
    ),
    "not base64": (_with_image("data:image/png;base64,@@@@"), 400, "invalid_image", "base64"),
    "not an image": (_with_image("data:image/png;base64,aGVsbG8="), 400, "invalid_image", "PIL"),
    "two images": (_two_images(), 400, "invalid_request", "at most 1 image"),
    "processed image too large": (  # 100x400 -> 96x384 = 36864 pixels > 27648, found before processing
        _with_image(data_url(Image.new("RGB", (100, 400)))),
        413,
        "image_too_large",
        "96x384",
    ),
    "prompt longer than the context": (
        chat_body(" ".join(["circle"] * 300)),
        400,
        "context_length_exceeded",
        "limit is 256",
    ),
    "unknown model": (chat_body(model="gpt-4o"), 404, "model_not_found", "tiny-adallava-l"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_clear_error(client, case):
    body, status, code, fragment = BAD_REQUESTS[case]
    response = client.post(
        "/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and fragment in error["message"], error
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"\xff\xfe", "not valid JSON")],
)
def test_malformed_json_is_a_400(client, content, fragment):
    response = client.post("/v1/chat/completions", content=content, headers=JSON)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]


def test_oversized_requests_are_a_413(client):
    too_many_bytes = post(client, chat_body(image=_noise_png(220)))  # ~145 kB > 100 kB
    assert too_many_bytes.status_code == 413
    assert "--max-image-bytes" in too_many_bytes.json()["error"]["message"]
    big = io.BytesIO()
    Image.new("RGB", (1200, 1000)).save(big, format="PNG")  # few bytes, 1.2 M pixels > 1 M
    too_many_pixels = post(client, chat_body(image=data_url(Image.open(big))))
    assert too_many_pixels.status_code == 413
    assert "1200x1000" in too_many_pixels.json()["error"]["message"]
    body = post(client, chat_body(image=_noise_png(400)))  # ~640 kB of base64 > 600 kB body
    assert body.status_code == 413 and body.json()["error"]["code"] == "request_too_large"
    assert post(client, chat_body()).status_code == 200  # and the server carries on


def test_unknown_routes_and_methods_answer_in_the_error_shape(client):
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = client.get("/v1/chat/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_metrics_count_requests_latencies_budgets_and_queue(client):
    post(client, chat_body(budget=0.5))
    post(client, chat_body(budget=0.3))
    text = client.get("/metrics").text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(samples['adallava_requests_total{status="200"}']) >= 1
    assert float(samples['adallava_requests_total{status="400"}']) >= 1
    for name in ("request", "queue", "prefill", "decode"):
        assert float(samples[f"adallava_{name}_seconds_count"]) >= 1
        assert f'adallava_{name}_seconds_bucket{{le="+Inf"}}' in samples
    assert float(samples['adallava_budget_bucket{le="0.5"}']) >= 1
    assert float(samples["adallava_batch_size_count"]) >= 1
    assert samples["adallava_queue_depth"] == "0"
    # The gauge drops when the batch's worker returns, which may be just after the answer was sent.
    wait_until(lambda: "\nadallava_running_requests 0\n" in client.get("/metrics").text, what="running 0")
    for name in ("prompt_tokens", "completion_tokens", "prefill_flops"):
        assert float(samples[f"adallava_{name}_total"]) > 0
    assert "# TYPE adallava_request_seconds histogram" in text


def test_the_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="budget-a"' in page.text and "/static/app.js" in page.text
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200


def test_a_base_model_refuses_budgets_and_runs_every_layer():
    with live_server("tiny-llava") as server, httpx.Client(base_url=server.url, timeout=30) as client:
        info = client.get("/v1/models").json()["data"][0]["adallava"]
        assert info["adaptive"] is False and info["switches"] is None
        refused = post(client, chat_body(budget=0.75))
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "budget_not_supported" and "not adaptive" in error["message"]
        answered = post(client, chat_body())
        assert answered.status_code == 200
        report = answered.json()["adallava"]
        assert report["budget"] is None and report["plan"]["layers"] == list(range(16))
        assert report["prefill_flops"] == report["full_prefill_flops"]


def test_serve_command_checks_its_settings_before_loading(capsys):
    from adallava.cli import build_parser, main

    assert "serve" in build_parser().format_help()
    assert main(["serve", "--max-queue", "0"]) == 2
    assert "--max-queue" in capsys.readouterr().err
    assert main(["serve", "--default-max-tokens", "500", "--max-tokens-limit", "100"]) == 2
    assert "max_tokens_limit" in capsys.readouterr().err


def test_the_report_lists_the_words_the_tokenizer_did_not_know(client):
    # Bug caught: unknown words read as <unk> with nothing in the response saying so.
    report = post(client, chat_body("what colour is the zebra ?")).json()["adallava"]
    assert report["unknown_words"] == ["colour", "zebra"]  # by hand: the world's vocabulary lacks both
    assert post(client, chat_body("WHAT color is the circle ?")).json()["adallava"]["unknown_words"] == []


def test_a_model_with_an_untrained_scheduler_is_served_as_a_base_model(tmp_path):
    # Bug caught: an `adallava init` output served with budgets, planned by a random scheduler.
    from adallava.core.config import AdaptiveConfig
    from adallava.io.init import init_from_base

    folder = str(tmp_path / "init")
    init_from_base("tiny-llava", folder, AdaptiveConfig())
    with live_server(folder) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        info = client.get("/v1/models").json()["data"][0]["adallava"]
        assert info["adaptive"] is False and info["scheduler_trained"] is False
        refused = post(client, chat_body(budget=0.75))
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "budget_not_supported"
        assert "no trained scheduler" in refused.json()["error"]["message"]
        report = post(client, chat_body()).json()["adallava"]
        assert report["budget"] is None and report["plan"]["layers"] == list(range(16))


def test_serve_refuses_a_device_this_torch_cannot_use(capsys, monkeypatch):
    # Bug caught: `adallava serve --device cuda` on a CPU-only torch ending in a traceback.
    import torch

    from adallava.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["serve", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device 'cuda'" in err and "--device cpu" in err and "Traceback" not in err
