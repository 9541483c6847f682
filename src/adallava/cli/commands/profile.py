"""`adallava profile`: measure a model's latency profile on this machine, for deadline budgets.

adallava profile                              # the bundled default model, saved to the user cache
adallava profile --model tiny-adallava-h --quick
adallava profile --model runs/my-model --out runs/my-model/latency   # beside a checkpoint

Times each component of the lean engine (vision tower, one decoder layer's prefill against prompt
tokens and decoding step against context length, the LM head, per-request and per-step overheads),
fits the latency model (docs/deadlines.md) and saves it keyed by model, engine, device, dtype,
threads and library versions; a deadline request loads it instead of calibrating quickly itself.
Run it on an idle machine: the profile describes idle speed, and contention is measured online.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adallava.io.hub import BUNDLED, DEFAULT_MODEL, check_device, load_model


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure a model's latency profile for deadline budgets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"folder or bundled name ({', '.join(BUNDLED)}; default %(default)s)",
    )
    parser.add_argument(
        "--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: where the model loads)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats and token counts (about a second)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder to save the profile in (default: the user cache folder)",
    )
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from adallava.core.latency_model import default_cache_folder, predict_ms, save_profile
    from adallava.engine.deadlines import calibrate

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.device is not None:
        check_device(args.device)
    model, _ = load_model(args.model, device=args.device)
    profile = calibrate(model, quick=args.quick)
    path = save_profile(profile, args.out)
    if args.json:
        print(json.dumps(profile.to_dict()))
        return 0
    print(
        f"latency profile of {args.model} on {profile.key.device} ({profile.key.dtype}, "
        f"{profile.key.threads} threads), saved to {path}"
    )
    print(f"  vision tower + projector: {profile.vision_per_image_ms:.2f} ms per image")
    for name, cost, unit in (
        ("prefill, one decoder layer", profile.prefill_prefix_layer, "prompt token"),
        ("decode step, one decoder layer", profile.decode_prefix_layer, "context token"),
        ("final norm + LM head", profile.lm_head, "row"),
    ):
        print(f"  {name}: {cost.fixed_ms:.3f} ms + {cost.per_token_ms * 1e3:.2f} us per {unit}")
    print(
        f"  overheads: {profile.request_overhead_ms:.2f} ms per request, "
        f"{profile.step_overhead_ms:.3f} ms per step"
    )
    per_layer = profile.units_per_layer
    for units in (0, profile.max_upper_units):
        time = predict_ms(profile, units, 32, 16)
        print(
            f"  predicted, 32-token prompt + 16 new tokens, {profile.prefix_layers * per_layer + units}"
            f"/{profile.num_layers * per_layer} units: {time.total_ms:.1f} ms "
            f"(prefill {time.prefill_ms:.1f}, decode {time.decode_ms:.1f})"
        )
    if args.out is None:
        print(f"(the user cache folder is {default_cache_folder()}; set ADALLAVA_CACHE to move it)")
    return 0
