"""Helpers for the serving tests: a live loopback server on a bundled tiny model, request bodies,
and a gate that holds the model's worker so that queueing, batching and timeouts are deterministic."""

from __future__ import annotations

import base64
import io
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from adallava.eval.runner import load_model
from adallava.serve import Settings, create_app
from adallava.serve.testing import LiveServer

SCENE = Path(__file__).resolve().parents[1] / "examples" / "scene.png"
QUESTIONS = [
    "what color is the circle ?",
    "how many shapes are there ?",
    "what shape is red ?",
    "is there a square ?",
    "what color is the square ?",
    "what is at the top left ?",
]


def data_url(image: Image.Image | Path = SCENE, fmt: str = "PNG") -> str:
    if isinstance(image, Path):
        data = image.read_bytes()
    else:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        data = buffer.getvalue()
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(data).decode()


def chat_body(question: str = QUESTIONS[0], budget=None, image: str | None = None, **extra) -> dict:
    """A chat request about the scene (or `image`, a data URL) with an optional budget."""
    content = [
        {"type": "image_url", "image_url": {"url": image or data_url()}},
        {"type": "text", "text": question},
    ]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 6, **extra}
    if budget is not None:
        body["budget"] = budget
    return body


@contextmanager
def live_server(model: str = "tiny-adallava-l", **settings):
    """A started LiveServer for a bundled model; `settings` override Settings' defaults."""
    loaded, processor, adaptive = load_model(model)
    app = create_app(loaded, processor, Settings(**settings), name=model, adaptive=adaptive)
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
        self.served.run = self._run  # the batcher looks `run` up on every batch

    def _run(self, jobs):
        self.entered.set()
        if not self.released.wait(30):
            raise RuntimeError("gate never released")
        return type(self.served).run(self.served, jobs)

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
