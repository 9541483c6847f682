"""Settings dataclasses as command-line flags: the argparse side of `adallava.core.settings`
(one mechanism behind `adallava train`, `adallava eval` and `adallava serve`)."""

from __future__ import annotations

import argparse
import inspect
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adallava.core.settings import Setting, convert, field_help, flag, load, paths, settings_of


# ---- argparse --------------------------------------------------------------------------------------
def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    required: bool = False,
    aliases: Mapping[str, Sequence[str]] | None = None,
    moved: Mapping[str, str] | None = None,
    prefix: str = "",
) -> None:
    """One flag per field of `cls` (dotted flags for a nested dataclass, in their own group), help from
    the field's docstring. Flags not given stay out of the namespace (see `from_namespace`).

    required: required fields are required flags (for commands without a YAML file).
    aliases: extra flag names by dotted path, e.g. {"benchmarks": ["--benchmark"]}.
    moved: old key -> new dotted path; the old flag is kept hidden and stops with the new name.
    """
    docs = field_help(cls)
    for setting in settings_of(cls, prefix):
        if setting.nested:
            title = f"{setting.path} ({setting.kind.__name__}; YAML: `{setting.path}: {{key: value}}`)"
            description = docs.get(setting.name) or (inspect.getdoc(setting.kind) or "").split("\n\n")[0]
            description = textwrap.fill(description, 100)  # some commands' formatters do not wrap
            group = (
                parser.add_argument_group(title, description)
                if isinstance(parser, argparse.ArgumentParser)
                else parser
            )
            add_arguments(group, setting.kind, required=required, aliases=aliases, prefix=setting.path + ".")
            continue
        text = docs.get(setting.name, "")
        if setting.required:
            text += " (required)"
        elif setting.default not in (None, ()) and "default" not in text:
            text += f" (default: {_show(setting.default)})"
        kwargs: dict[str, Any] = {
            "dest": setting.path,
            "default": argparse.SUPPRESS,
            "help": text.replace("%", "%%"),
        }
        names = [setting.flag, *(aliases or {}).get(setting.path, ())]
        if setting.kind is bool and not setting.many:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if required and setting.required:
            kwargs["required"] = True
        if setting.choices is not None and not setting.many:
            kwargs["choices"] = setting.choices
        else:
            kwargs["type"] = _argparse_type(setting)
            kwargs["metavar"] = "A,B,..." if setting.many else setting.kind.__name__.upper()
        parser.add_argument(*names, **kwargs)
    for old, new in (moved or {}).items():
        parser.add_argument(flag(old), nargs="?", action=_Moved, new=new, help=argparse.SUPPRESS)


class _Moved(argparse.Action):
    """An old flag: stops with the name of the flag that replaced it."""

    def __init__(self, *args, new: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now {flag(self.new)} (YAML: {self.new})")


def _argparse_type(setting: Setting):
    def parse(text: str) -> Any:
        try:
            return convert(text, setting)
        except ValueError as error:  # argparse names the flag itself
            message = str(error).removeprefix(setting.flag + " ")
            raise argparse.ArgumentTypeError(message) from None

    return parse


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return "empty" if value == "" else str(value)


# ---- building a settings object --------------------------------------------------------------------
def from_namespace(
    cls: type, namespace: argparse.Namespace, config: str | Path | None = None, *, moved=None
) -> Any:
    """`cls` from the flags the user gave (over the YAML file `config`, over the defaults)."""
    known = paths(cls)
    given = {key: value for key, value in vars(namespace).items() if key in known}
    return load(cls, config, given, moved=moved)


