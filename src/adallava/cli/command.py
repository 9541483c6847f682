"""The `adallava` command. Each subcommand lives in `adallava/cli/commands/<name>.py` and exposes
`add_parser(subparsers)`, which registers its arguments and sets `func` to a function taking the
parsed arguments and returning an exit code."""

from __future__ import annotations

import argparse
import importlib
import sys

# Order here is the order of `adallava --help`.
COMMANDS = [
    "ask",
    "serve",
    "models",
    "demo",
    "world",
    "train",
    "eval",
    "flops",
    "profile",
    "score",
    "convert",
    "init",
    "plot",
    "report",
    "env",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adallava", description="Latency-adaptive multimodal LLMs (AdaLLaVA) on Hugging Face Llava."
    )
    parser.add_argument(
        "--version", action="version", version=_version_line(), help="print adallava's version and exit"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"adallava.cli.commands.{name}").add_parser(subparsers)
    return parser


def _version_line() -> str:
    """adallava and its main dependencies' versions, without importing them (fast)."""
    from adallava.cli.commands.env import version_of

    names = ("adallava", "torch", "transformers", "accelerate")
    return ", ".join(f"{name} {version_of(name)}" for name in names)


def _quiet_transformers() -> None:
    """Command-line output is ours: no weight-loading bars or backend notices from transformers."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    _quiet_transformers()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"adallava {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
