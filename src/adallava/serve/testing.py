"""A live server on a free loopback port in a background thread, for tests, examples and benchmarks.

with LiveServer(create_app(model, processor, Settings())) as server:
    httpx.get(server.url + "/health")
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


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
        """What SIGTERM does: stop accepting, let in-flight requests finish, then exit."""
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
