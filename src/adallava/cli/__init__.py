"""The `adallava` command: `command.main` parses the command line and runs one of `commands/`;
`flags` turns settings dataclasses into flags."""

from adallava.cli.command import build_parser, main

__all__ = ["build_parser", "main"]
