"""A live server on a free loopback port in a background thread, for tests, examples and benchmarks,
and the chat request bodies they send it.

with LiveServer(create_app(model, processor, Settings())) as server:
    httpx.post(server.url + "/v1/chat/completions", json=chat_body(QUESTIONS[0], data_url(image)))
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from PIL import Image

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
        self.server = uvicorn.Server(config)
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
        """What SIGTERM does to `adallava serve` (adallava.serve.server.Server): tell the app's batcher
        (503 from now on), stop accepting, let in-flight requests finish, then exit."""
        batcher = getattr(getattr(self.app, "state", None), "batcher", None)
        if batcher is not None:
            batcher.begin_closing()
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


class ServerProcess:
    """`adallava serve ARGS` as its own process on a free loopback port, until `stop()` (SIGTERM) or
    the end of `with`; `rss_mb()` is its resident memory (Linux), `log()` what it wrote."""

    def __init__(self, *args: str, start_timeout_s: float = 120.0):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.args, self.start_timeout_s = args, start_timeout_s
        self.output = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the process
        self.process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        command = [
            sys.executable,
            "-c",
            "import sys; from adallava.cli import main; sys.exit(main(sys.argv[1:]))",
        ]
        command += ["serve", "--port", str(self.port), "--log-level", "warning", *self.args]
        self.process = subprocess.Popen(command, stdout=self.output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"adallava serve did not start:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)

    def rss_mb(self) -> float:
        """Resident set size in MB (VmRSS of /proc/PID/status)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc (Linux only)")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used (Linux /proc/PID/stat)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        self.output.seek(0)
        return self.output.read().decode(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- hostile requests (issue 17): each must be refused with a 4xx quickly, the server unharmed ----


@dataclass(frozen=True)
class Hostile:
    """A request a hostile or broken client sends: raw body bytes, Content-Type, and the refusal
    expected (status, error code)."""

    body: bytes
    status: int
    code: str
    content_type: str = "application/json"


def hostile_requests(image_url: str) -> dict[str, Hostile]:
    """The hostile requests of issue 17's probe, by name, around a valid image data URL (`image_url`).
    Each is a few bytes to a few MB and must cost the server no more than reading it."""

    def body(question="what color is the circle ?", url=image_url, **fields) -> bytes:
        return json.dumps(chat_body(question, url, **fields)).encode()

    def image(mode: str, size: tuple[int, int], fmt: str = "PNG") -> str:
        return data_url(Image.new(mode, size), fmt)

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    surrogate = body().replace(b"what color", b"what \\ud800 color")
    return {
        "1x100000 PNG (274 bytes)": Hostile(body(url=image("L", (1, 100_000))), 400, "image_aspect_ratio"),
        "15 MB of text": Hostile(body("circle " * 2_200_000), 400, "context_length_exceeded"),
        "lone surrogate": Hostile(surrogate, 400, "invalid_unicode"),
        "400-digit budget": Hostile(body(budget=10**400 - 1), 400, "invalid_budget"),
        "400-digit max_tokens": Hostile(body(max_tokens=10**400 - 1), 400, "invalid_request"),
        "5000-digit integer": Hostile(body()[:-1] + b', "seed": ' + b"7" * 5000 + b"}", 400, "invalid_json"),
        "50000 nested brackets": Hostile(
            body()[:-1] + b', "user": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "invalid_json"
        ),  # fmt: skip
        "text/plain body": Hostile(body(), 415, "unsupported_media_type", "text/plain"),
        "form body": Hostile(
            b"messages=hi", 415, "unsupported_media_type", "application/x-www-form-urlencoded"
        ),
        "data URL typed text/html": Hostile(
            body(url=image_url.replace("image/png", "text/html")), 400, "invalid_image"
        ),
        "EPS labelled PNG": Hostile(
            body(url="data:image/png;base64," + base64.b64encode(eps).decode()), 400, "invalid_image"
        ),  # fmt: skip
        "EPS as bare base64": Hostile(body(url=base64.b64encode(eps).decode()), 400, "invalid_image"),
        "JPEG labelled PNG": Hostile(
            body(url=image("RGB", (48, 48), "JPEG").replace("jpeg", "png", 1)), 400, "invalid_image"
        ),  # fmt: skip
        "100000 messages": Hostile(
            json.dumps({"messages": [{"role": "user", "content": "hi"}] * 100_000}).encode(),
            400,
            "too_many_messages",
        ),  # fmt: skip
        "typed image placeholder": Hostile(body("<image> <image> what is it ?"), 400, "invalid_request"),
        "FLOPs cap of 1e400": Hostile(body(budget="1e400"), 400, "invalid_budget"),
    }
