"""`adallava train --config FILE.yaml [--key value ...]`: the training recipe (docs/training.md).

    adallava train --config configs/tiny-base.yaml
    adallava train --config configs/tiny-adaptive-l.yaml --max-steps 400 --resume latest
    accelerate launch --config_file configs/accelerate/ddp.yaml -m adallava.cli train --config FILE.yaml

Every YAML key is also a flag (`learning_rate` <-> `--learning-rate`; nested keys dotted:
`adaptive: {switches: head}` <-> `--adaptive.switches head`); flags override the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adallava.cli import flags
from adallava.train.args import MOVED, TrainArgs


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a base Llava or fine-tune an adaptive one (AdaLLaVA) from a YAML recipe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML file of training keys (see configs/); flags override it",
    )
    flags.add_arguments(parser, TrainArgs, moved=MOVED)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adallava.train.recipe import train

    train_args = flags.from_namespace(TrainArgs, args, args.config, moved=MOVED)
    result = train(train_args)
    print(
        f"done: {result.steps} steps, final loss {result.final_loss:.4f}, "
        f"{result.seconds_per_step:.3f} s/step, {result.samples_per_s:.1f} samples/s -> {result.output_dir}"
    )
    return 0
