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

from adallava.cli import flags
from adallava.core.config import SWITCH_KINDS, AdaptiveConfig
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
    # The adaptive settings come from AdaptiveConfig itself (names, types, choices, help), as for
    # `adallava train`'s `--adaptive.*`; --switches has no default here: the user must choose.
    flags.add_arguments(parser.add_argument_group("adaptive settings (AdaptiveConfig)"), AdaptiveConfig)
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
    if "switches" not in vars(args):
        raise ValueError(
            f"--switches is required: one of {', '.join(SWITCH_KINDS)} (layer: AdaLLaVA-L, head: -H)"
        )
    adaptive = flags.from_namespace(AdaptiveConfig, args)
    model = init_from_base(args.base, args.out, adaptive, args.dtype, args.seed)
    resolved = model.adaptive
    print(f"wrote {args.out}: {resolved.switches} switches, P = {resolved.num_prefix_layers} of N = "
          f"{model.num_layers} layers, scheduler freshly initialised (seed {args.seed}) and untrained: "
          "train it (`adallava train`, stage adaptive) before asking with a budget")  # fmt: skip
    return 0
