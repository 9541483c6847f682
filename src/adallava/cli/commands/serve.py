"""`adallava serve`: an OpenAI-compatible chat-completions server with a budget per request.

adallava serve                                    # tiny-adallava-l on http://127.0.0.1:8000
adallava serve --model tiny-adallava-h --port 8080 --max-batch-size 16
curl -s localhost:8000/v1/models

POST /v1/chat/completions takes OpenAI's chat format (images as data URLs) plus an optional "budget"
(a fraction in [b_min, 1] or a FLOPs cap such as "2M"; absent: 1.0, the full model). A model without a
trained scheduler (a base model, or the output of `adallava init`) is served as a base model: every
layer runs and a budget is a 400. The page at / lets you try it. Limits, status codes and metrics:
docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging
import os

from adallava.cli import flags
from adallava.io.hub import BUNDLED, DEFAULT_MODEL, check_device, load_model, resolve_model
from adallava.serve.settings import Settings

API_KEY_ENV = "ADALLAVA_API_KEY"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API with per-request budgets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"folder or bundled name ({', '.join(BUNDLED)}; default %(default)s)",
    )
    parser.add_argument("--processor", metavar="DIR", help="folder or bundled name holding the processor "
                        "(default: --model)")  # fmt: skip
    parser.add_argument("--served-model-name", help="the model id clients use (default: --model as given)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000, help="(default %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' on /v1/* and /metrics (default: ${API_KEY_ENV}, else "
        "none); set one before listening beyond this machine",
    )
    flags.add_arguments(parser.add_argument_group("batching and limits"), Settings)
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch
    import uvicorn

    from adallava.engine.decoder import ADAPTIVE_CONFIG_FILE
    from adallava.serve.app import create_app
    from adallava.serve.server import Server

    settings = flags.from_namespace(Settings, args)  # checked before the model loads
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    check_device(args.device)
    folder = resolve_model(args.model, flag="--model")
    model, processor = load_model(folder, args.processor, args.device, dtype=getattr(torch, args.dtype))
    processor.tokenizer.padding_side = "left"
    # Served with budgets only when its scheduler was trained (ServedModel checks it too).
    adaptive = (folder / ADAPTIVE_CONFIG_FILE).is_file() and model.scheduler_trained
    name = args.served_model_name or str(args.model)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError(f"--api-key (or ${API_KEY_ENV}) is empty; give a key or leave it unset")
    app = create_app(model, processor, settings, name=name, adaptive=adaptive, api_key=args.api_key)
    kind = f"adaptive, b_min {model.b_min:g}" if adaptive else "no trained scheduler: full model, no budgets"
    url = f"http://{args.host}:{args.port}"
    auth = "API key required" if args.api_key else "no API key"
    print(
        f"adallava serve: {name} ({kind}) on {url} (page: /, API: /v1/chat/completions; {auth})", flush=True
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )
    Server(config).run()
    return 0
