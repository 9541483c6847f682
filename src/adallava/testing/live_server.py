"""A live server on a free loopback port in a background thread, for tests, examples and benchmarks,
and the chat request bodies they send it.

with LiveServer(create_app(model, processor, Settings())) as server:
    httpx.post(server.url + "/v1/chat/completions", json=chat_body(QUESTIONS[0], data_url(image)))
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from pathlib import Path

import uvicorn
from PIL import Image

from adallava.serve.server import Server, begin_closing

# Questions about the repository's examples/scene.png, in the world's words.
QUESTIONS = [
    "what color is the circle ?",
    "how many shapes are there ?",
    "what shape is red ?",
    "is there a square ?",
    "what color is the square ?",
    "what is at the top left ?",
]


def data_url(image: Image.Image | Path, fmt: str = "PNG") -> str:
    """An image as a data URL: a file's bytes as they are, or a PIL image saved as `fmt`."""
    if isinstance(image, Path):
        data = image.read_bytes()
    else:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        data = buffer.getvalue()
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(data).decode()


def chat_body(question: str, image_url: str, budget=None, **fields) -> dict:
    """A one-turn chat request (an image, then the question) with an optional budget; `fields` are
    other request fields (max_tokens, stream, ...)."""
    content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": question}]
    body = {"messages": [{"role": "user", "content": content}], **fields}
    if budget is not None:
        body["budget"] = budget
    return body


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 (a port the OS picks) until `stop()` or the end of `with`."""

    def __init__(self, app, graceful_timeout_s: float | None = None, start_timeout_s: float = 30.0):
        self.app = app
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", timeout_graceful_shutdown=graceful_timeout_s, lifespan="on"
        )
        self.server = Server(config)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self.socket]},
            name="adallava-test-server",
            daemon=True,
        )
        self.start_timeout_s = start_timeout_s

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def begin_shutdown(self) -> None:
        """What SIGTERM does: stop accepting, let in-flight requests finish, then exit."""
        begin_closing(self.app)
        self.server.should_exit = True

    def stop(self, timeout_s: float = 30.0) -> None:
        self.begin_shutdown()
        self.thread.join(timeout_s)
        self.socket.close()
        if self.thread.is_alive():
            raise RuntimeError(f"the test server did not stop within {timeout_s} s")

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
