"""uvicorn's server, told when shutdown begins.

uvicorn stops accepting connections on SIGTERM (or Ctrl-C) and lets in-flight requests finish, but the
app hears of it only at the end (its lifespan). This server tells the app's batcher at the signal, so
that meanwhile `/health` answers 503 and a new request on a connection still open gets 503 with
`Connection: close`, while every request already accepted is answered.
"""

from __future__ import annotations

import uvicorn


class Server(uvicorn.Server):
    def handle_exit(self, sig, frame) -> None:
        begin_closing(self.config.app)
        super().handle_exit(sig, frame)


def begin_closing(app) -> None:
    """Tell an adallava app (anything with `state.batcher`) that shutdown has begun."""
    batcher = getattr(getattr(app, "state", None), "batcher", None)
    if batcher is not None:
        batcher.begin_closing()
