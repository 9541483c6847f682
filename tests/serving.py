"""Helpers for the serving tests: a live loopback server on a bundled tiny model, request bodies,
and a gate that holds the model's worker so that queueing, batching and timeouts are deterministic."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from adallava.eval.runner import load_model
from adallava.serve import Settings, create_app
from adallava.testing.live_server import QUESTIONS, LiveServer
from adallava.testing.live_server import chat_body as request_body
from adallava.testing.live_server import data_url as image_data_url

SCENE = Path(__file__).resolve().parents[1] / "examples" / "scene.png"


def data_url(image: Image.Image | Path = SCENE, fmt: str = "PNG") -> str:
    return image_data_url(image, fmt)


def chat_body(question: str = QUESTIONS[0], budget=None, image: str | None = None, **extra) -> dict:
    """A chat request about the scene (or `image`, a data URL) with an optional budget; 6 new tokens
    unless `extra` says otherwise."""
    return request_body(question, image or data_url(), budget, **{"max_tokens": 6, **extra})


@contextmanager
def live_server(model: str = "tiny-adallava-l", api_key: str | None = None, **settings):
    """A started LiveServer for a bundled model; `settings` override Settings' defaults."""
    loaded, processor, adaptive = load_model(model)
    app = create_app(loaded, processor, Settings(**settings), name=model, adaptive=adaptive, api_key=api_key)
    with LiveServer(app) as server:
        yield server


def wait_until(condition, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Gate:
    """Holds the model's worker thread at the start of its next batch until `release()`, so that
    requests pile up in the queue exactly as a test arranges them."""

    def __init__(self, server: LiveServer):
        self.served = server.app.state.served
        self.batcher = server.app.state.batcher
        self.entered, self.released = threading.Event(), threading.Event()
        self.jobs: list = []  # the held batch's jobs
        self.run = lambda jobs: type(self.served).run(self.served, jobs)  # what runs after the gate
        self.served.run = self._run  # the batcher looks `run` up on every batch

    def _run(self, jobs):
        self.jobs = jobs
        self.entered.set()
        if not self.released.wait(30):
            raise RuntimeError("gate never released")
        return self.run(jobs)

    def wait_entered(self) -> None:
        if not self.entered.wait(20):
            raise AssertionError("no batch reached the model")

    def wait_queued(self, count: int) -> None:
        wait_until(lambda: self.batcher.depth == count, what=f"{count} queued requests")

    def release(self) -> None:
        self.released.set()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        del self.served.run  # back to the class's method
