"""`adallava init`: make any Hugging Face Llava folder adaptive, with a freshly initialised scheduler
and latency encoder, ready to train. The tokenizer, processor and chat template files of the base
folder are copied, so the output loads offline.

    adallava init --base /path/to/llava-1.5-7b-hf --switches layer --out /path/to/ada-llava-7b-init
    adallava init --base tiny-llava --switches head --out runs/tiny-h-init

The new scheduler is untrained ("scheduler_trained": false in adaptive_config.json): the model
refuses budgets until `adallava train` (stage adaptive) has trained it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adallava.core.config import (
    SCHEDULER_KINDS,
    SELECTION_RULES,
    SWITCH_KINDS,
    TOKEN_SELECTIONS,
    AdaptiveConfig,
)
from adallava.io.checkpoint import DTYPES
from adallava.io.init import init_from_base


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "init",
        help="make a HF Llava folder adaptive (fresh scheduler), ready to train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--base", required=True, type=Path, metavar="DIR", help="a HF Llava folder, or a bundled name"
    )
    parser.add_argument(
        "--switches", required=True, choices=SWITCH_KINDS, help="layer (AdaLLaVA-L) or head (-H)"
    )
    parser.add_argument(
        "--num-prefix-layers", type=int, default=None, help="always-run layers P (default: N // 2)"
    )
    parser.add_argument(
        "--rank",
        type=int,
        default=AdaptiveConfig.rank,
        help="head switches: heads per budget unit (default: 8)",
    )
    parser.add_argument(
        "--mlp-groups",
        type=int,
        default=None,
        help="head switches: MLP groups per layer (default: #head units)",
    )
    parser.add_argument(
        "--selection", choices=SELECTION_RULES, default=AdaptiveConfig.selection, help="plan selection rule"
    )
    parser.add_argument(
        "--token-selection", choices=TOKEN_SELECTIONS, default="none", help="visual token selection"
    )
    parser.add_argument(
        "--scheduler",
        choices=SCHEDULER_KINDS,
        default=AdaptiveConfig.scheduler,
        help="probabilistic (the paper's method) or deterministic (the ablation baseline)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *sorted(DTYPES)],
        help="weights dtype (default: as stored)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the scheduler's initialisation")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="new folder to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    adaptive = AdaptiveConfig(
        switches=args.switches,
        num_prefix_layers=args.num_prefix_layers,
        rank=args.rank,
        mlp_groups=args.mlp_groups,
        selection=args.selection,
        token_selection=args.token_selection,
        scheduler=args.scheduler,
    )
    model = init_from_base(args.base, args.out, adaptive, args.dtype, args.seed)
    resolved = model.adaptive
    print(f"wrote {args.out}: {resolved.switches} switches, P = {resolved.num_prefix_layers} of N = "
          f"{model.num_layers} layers, scheduler freshly initialised (seed {args.seed}) and untrained: "
          "train it (`adallava train`, stage adaptive) before asking with a budget")  # fmt: skip
    return 0
