"""Batching, queueing, timeouts, failure isolation and graceful shutdown, on live loopback servers.

A `Gate` holds the model's worker thread, so requests pile up in the queue exactly as each test
arranges them: no sleeps that race the server."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serving import QUESTIONS, Gate, chat_body, live_server, wait_until

MIXED = [(QUESTIONS[0], 0.5, 3), (QUESTIONS[1], 0.6, 6), (QUESTIONS[2], 0.75, 2),
         (QUESTIONS[3], 0.85, 6), (QUESTIONS[4], 1.0, 4), (QUESTIONS[5], "130M", 5)]  # fmt: skip


@pytest.fixture(scope="module")
def server():
    with live_server("tiny-adallava-l", max_batch_size=8, batch_wait_ms=2) as server:
        yield server


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def stream_text(url: str, body: dict) -> tuple[str, dict]:
    """(the streamed text, the final chunk's adallava report) of a streaming request."""
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line and line != "data: [DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    return text, chunks[-1]["adallava"]


def _without_times(report: dict) -> dict:
    return {k: v for k, v in report.items() if not k.endswith("_ms") and k != "batch_size"}


def test_concurrent_mixed_budgets_batch_together_and_answer_as_alone(server):
    bodies = [chat_body(q, budget=b, max_tokens=n) for q, b, n in MIXED]
    with Gate(server) as gate, ThreadPoolExecutor(len(bodies) + 2) as pool:
        blocker = pool.submit(post, server.url, chat_body())
        gate.wait_entered()  # the blocker holds the worker; everything else waits in the queue
        batched = [pool.submit(post, server.url, body) for body in bodies]
        streamed = pool.submit(stream_text, server.url, bodies[1])
        gate.wait_queued(len(bodies) + 1)
        gate.release()
        assert blocker.result().status_code == 200
        batched = [future.result() for future in batched]
        streamed_text, streamed_report = streamed.result()
    for response in batched:
        assert response.status_code == 200, response.text
        assert response.json()["adallava"]["batch_size"] == len(bodies) + 1  # one batch, all of them
    budgets = [r.json()["adallava"]["budget"] for r in batched]
    assert len({round(b, 3) for b in budgets}) == len(bodies)  # each row ran under its own budget
    for response in batched:  # and kept it: prefill FLOPs within budget x the row's full FLOPs
        report = response.json()["adallava"]
        cap = report["budget"] * report["full_prefill_flops"]["llm"]
        assert report["prefill_flops"]["llm"] <= cap * (1 + 1e-9), report
    for body, response in zip(bodies, batched, strict=True):
        alone = post(server.url, body).json()
        assert alone["adallava"]["batch_size"] == 1
        got = response.json()
        assert got["choices"] == alone["choices"]
        assert got["usage"] == alone["usage"]
        assert _without_times(got["adallava"]) == _without_times(alone["adallava"])
    assert streamed_text == batched[1].json()["choices"][0]["message"]["content"]
    assert _without_times(streamed_report) == _without_times(batched[1].json()["adallava"])


def test_a_flops_cap_below_the_prefix_is_refused_before_it_can_spoil_a_batch(server):
    # Bug caught (issue 17): such a cap was found only when its batch ran, so the whole batch was
    # retried one request at a time. Now it is a 400 at preparation, while the model is still held.
    bodies = [chat_body(QUESTIONS[0], budget=0.6), chat_body(QUESTIONS[2])]
    with Gate(server) as gate, ThreadPoolExecutor(4) as pool:
        blocker = pool.submit(post, server.url, chat_body())
        gate.wait_entered()
        futures = [pool.submit(post, server.url, body) for body in bodies]
        bad = post(server.url, chat_body(QUESTIONS[1], budget="1K"))  # answered while the model is held
        assert bad.status_code == 400 and "minimum feasible cap" in bad.json()["error"]["message"]
        gate.wait_queued(len(bodies))
        gate.release()
        good_a, good_b = (future.result() for future in futures)
        assert blocker.result().status_code == 200
    for body, response in ((bodies[0], good_a), (bodies[1], good_b)):
        assert response.status_code == 200
        assert response.json()["adallava"]["batch_size"] == 2  # batched together, not one at a time
        alone = post(server.url, body).json()
        assert response.json()["choices"] == alone["choices"]
        assert _without_times(response.json()["adallava"]) == _without_times(alone["adallava"])


def test_a_batch_that_raises_is_retried_one_request_at_a_time(server):
    # Bug caught: one request the model refuses failing its batch-mates too.
    served = server.app.state.served

    def refuses_the_second(jobs):
        if any(job.max_tokens == 5 for job in jobs) and len(jobs) > 1:
            raise ValueError("budget for row 1 is bad")
        if jobs[0].max_tokens == 5:
            raise ValueError("budget for row 0 is bad")
        return type(served).run(served, jobs)

    bodies = [chat_body(QUESTIONS[0], max_tokens=4), chat_body(QUESTIONS[1], max_tokens=5)]
    with Gate(server) as gate, ThreadPoolExecutor(3) as pool:
        blocker = pool.submit(post, server.url, chat_body())
        gate.wait_entered()
        futures = [pool.submit(post, server.url, body) for body in bodies]
        gate.wait_queued(len(bodies))
        gate.run = refuses_the_second
        gate.release()
        good, bad = (future.result() for future in futures)
        assert blocker.result().status_code == 200
    assert bad.status_code == 400 and bad.json()["error"]["message"] == "budget is bad"
    assert good.status_code == 200 and good.json()["adallava"]["batch_size"] == 1


def test_an_unexpected_error_is_a_500_and_the_server_carries_on(server):
    served = server.app.state.served

    def broken(jobs):
        raise RuntimeError("simulated fault")

    served.run = broken
    try:
        response = post(server.url, chat_body())
    finally:
        del served.run
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error" and "RuntimeError" in error["message"]
    assert "simulated fault" not in response.text  # details stay in the server log
    assert post(server.url, chat_body()).status_code == 200


def test_a_full_queue_answers_429_with_retry_after():
    with (
        live_server(max_queue=2, retry_after_s=3) as server,
        Gate(server) as gate,
        ThreadPoolExecutor(4) as pool,
    ):
        first = pool.submit(post, server.url, chat_body())
        gate.wait_entered()
        queued = [pool.submit(post, server.url, chat_body(q)) for q in QUESTIONS[:2]]
        gate.wait_queued(2)
        refused = post(server.url, chat_body())
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "3"
        assert (
            refused.json()["error"]["code"] == "queue_full"
            and "--max-queue" in refused.json()["error"]["message"]
        )
        gate.release()
        assert [f.result().status_code for f in (first, *queued)] == [200, 200, 200]
        metrics = httpx.get(server.url + "/metrics").text
        assert 'adallava_requests_total{status="429"} 1' in metrics


def test_a_request_past_its_timeout_gets_504_and_the_server_carries_on():
    with live_server(request_timeout_s=0.5) as server, Gate(server) as gate, ThreadPoolExecutor(2) as pool:
        held = pool.submit(post, server.url, chat_body())
        gate.wait_entered()
        streaming = post(server.url, {**chat_body(), "stream": True})  # waits in the queue
        assert held.result().status_code == 504
        assert streaming.status_code == 504
        error = streaming.json()["error"]
        assert error["code"] == "timeout" and "--request-timeout-s" in error["message"]
        gate.release()
        wait_until(lambda: server.app.state.batcher.depth == 0 and server.app.state.batcher.running == 0)
        assert post(server.url, chat_body()).status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        assert 'adallava_requests_total{status="504"} 2' in metrics


def test_shutdown_answers_every_accepted_request_then_stops():
    with live_server() as server, Gate(server) as gate, ThreadPoolExecutor(4) as pool:
        running = pool.submit(post, server.url, chat_body())
        gate.wait_entered()
        queued = [pool.submit(post, server.url, chat_body(q, budget=0.6)) for q in QUESTIONS[:2]]
        gate.wait_queued(2)
        server.begin_shutdown()

        def refuses_new_connections() -> bool:
            try:
                httpx.get(server.url + "/health", timeout=1)
            except httpx.TransportError:
                return True
            return False

        wait_until(refuses_new_connections, what="the listening socket to close")
        gate.release()
        answers = [f.result() for f in (running, *queued)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        # Bug caught: requests queued at shutdown answered with an empty or made-up report.
        for answer in answers:
            content = answer.json()["choices"][0]["message"]["content"]
            assert isinstance(content, str) and answer.json()["usage"]["completion_tokens"] >= 1
        reports = [a.json()["adallava"] for a in answers[1:]]
        assert [r["budget"] for r in reports] == [0.6, 0.6] and [r["batch_size"] for r in reports] == [2, 2]
        assert [len(r["plan"]["layers"]) for r in reports] == [9, 9]  # floor(16 x 0.6) layers ran
        server.thread.join(20)
        assert not server.thread.is_alive()
