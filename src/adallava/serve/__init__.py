"""`adallava serve`: an OpenAI-compatible server where each request carries its own budget.

    from adallava.serve import Settings, create_app
    app = create_app(model, processor, Settings(max_batch_size=8), name="tiny-adallava-l")

See docs/serving.md. The package: `protocol` (request schema, parsing, limits, response bodies),
`batcher` (bounded queue, dynamic batches, one worker thread), `engine` (the model side: preparing
requests in their own thread pool, running batches), `metrics` (Prometheus text), `settings` (limits
and their CLI flags), `app` (admission, routes, cancellation), `openapi` (the document at
/openapi.json), `server` (uvicorn's server, told when shutdown begins), `static/` (the page at `/`).
A live loopback server for tests and benchmarks is `adallava.testing.live_server`.
"""

from adallava.serve.app import create_app
from adallava.serve.settings import Settings

__all__ = ["Settings", "create_app"]
