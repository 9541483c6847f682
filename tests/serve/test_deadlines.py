"""Deadline budgets through `adallava serve`: accepted forms, counted from arrival, refused with 400
deadline_infeasible (or run best effort), reported per answer and counted in /metrics."""

import dataclasses

import httpx
import pytest

from adallava.core.deadline import Deadline
from adallava.serve.engine import deadline_from_arrival, remaining_deadline
from tests.serving import chat_body, live_server


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADALLAVA_CACHE", str(tmp_path_factory.mktemp("cache")))
        with (
            live_server("tiny-adallava-l") as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            yield client


def post(client, body):
    return client.post("/v1/chat/completions", json=body)


def test_a_generous_deadline_is_met_and_reported(client):
    response = post(client, chat_body(budget="10s"))
    assert response.status_code == 200, response.text
    report = response.json()["adallava"]
    deadline = report["deadline"]
    assert deadline["deadline_ms"] == 10_000 and deadline["met"] and report["budget"] == 1.0
    assert 0 <= deadline["waited_ms"] <= deadline["measured_ms"] <= 10_000
    assert deadline["predicted_ms"] > 0 and deadline["slowdown"] > 0
    assert 'adallava_deadline_requests_total{result="met"}' in client.get("/metrics").text


def test_an_impossible_deadline_is_refused_or_run_best_effort(client):
    response = post(client, chat_body(budget="0.01ms"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (
        error["code"] == "deadline_infeasible"
        and error["param"] == "budget"
        and "at least" in error["message"]
    )
    assert 'adallava_deadline_requests_total{result="infeasible"}' in client.get("/metrics").text
    response = post(client, chat_body(budget="0.01ms", best_effort=True))
    assert response.status_code == 200, response.text
    report = response.json()["adallava"]
    assert report["budget"] == 0.5 and report["deadline"]["best_effort"] and not report["deadline"]["met"]
    assert 'adallava_deadline_requests_total{result="missed"}' in client.get("/metrics").text


@pytest.mark.parametrize("budget", ["5 min", "-3ms", "0ms", "300"])
def test_bad_deadline_forms_name_the_accepted_ones(client, budget):
    response = post(client, chat_body(budget=budget))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_budget"


class FakeJob:
    def __init__(self, budget, arrived):
        self.budget, self.arrived, self.submitted = budget, arrived, arrived


def test_the_deadline_counts_from_arrival():
    """Catches: queue wait left out of a deadline (hand computation: 300 ms asked, 120 ms waited)."""
    job = FakeJob(Deadline(ms=300), arrived=10.0)
    assert remaining_deadline(job, now=10.12).ms == pytest.approx(180)
    assert remaining_deadline(job, now=10.5).ms == pytest.approx(1e-3)  # nothing left: infeasible
    assert remaining_deadline(FakeJob(0.75, 10.0), now=11.0) == 0.75

    @dataclasses.dataclass(frozen=True)
    class Answer:
        deadline: dict

    planned = {"deadline_ms": 180, "predicted_ms": 50.0, "measured_ms": 60.0, "met": True, "waited_ms": 0}
    seen = deadline_from_arrival(job, Answer(planned), start=10.12, end=10.45)
    assert seen.deadline["deadline_ms"] == 300 and seen.deadline["waited_ms"] == pytest.approx(120)
    assert seen.deadline["predicted_ms"] == pytest.approx(170)
    assert seen.deadline["measured_ms"] == pytest.approx(450) and not seen.deadline["met"]
