"""Settings dataclasses <-> YAML and (through `adallava.cli.flags`) command-line flags: the one
mechanism behind `adallava train`, `adallava eval` and `adallava serve` (TrainArgs, EvalArgs,
Settings). This module reads, checks and builds settings; the argparse side lives in the CLI.

A settings class is a frozen dataclass. Each field is one setting:

- name: field `learning_rate` is key `learning_rate` (dashes allowed in YAML) and flag `--learning-rate`.
- type, from the annotation: `bool` (a `--x / --no-x` flag), `int`, `float`, `str`, `X | None`, and
  `tuple[X, ...]` (comma-separated on the command line, a list or a comma-separated string in YAML).
- help: the docstring written under the field (read from the source with `ast`). Docstrings, not
  `field(metadata={"help": ...})`, because AdaptiveConfig (nested in TrainArgs, shared with the model
  code), TrainArgs and EvalArgs already document every field that way, editors show them on hover,
  and multi-line prose reads better as a docstring than as a string inside `field(...)`. The price:
  the `.py` source must be installed (it is, in wheels and editable installs); tests check that every
  field has help.
- choices: a `Literal[...]` annotation (`stage: Literal["base", "adaptive"]`, or `Literal[CONSTANT]`
  for a tuple of names that other modules use too). The same annotation drives argparse's `choices`,
  YAML checking and `check_choices(self)` in `__post_init__`. AdaptiveConfig keeps plain `str`
  annotations for now (config.py is outside this change); its choices come from config.py's own
  constants through `FOREIGN_CHOICES` below, until those annotations become Literal.
- nesting: a field whose type is a dataclass (`TrainArgs.adaptive: AdaptiveConfig`) is a group of
  dotted flags, `--adaptive.switches head`, `--adaptive.num-prefix-layers 16`, and a nested mapping
  in YAML (`adaptive: {switches: head, rank: 8}`). Dotted rather than a flat prefix, so that the flag,
  the YAML path and the error messages spell the same name.

Values come from the defaults, then a YAML file (where the command has `--config`), then the flags
the user typed: flags are added with `default=argparse.SUPPRESS`, so a flag not given never hides a
value from a lower layer. Errors name the flag (`--adaptive.rank must be >= 1`) and, for choices,
the allowed values.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from adallava.core.config import (
    SCHEDULER_KINDS,
    SELECTION_RULES,
    SWITCH_KINDS,
    TOKEN_SELECTIONS,
    AdaptiveConfig,
)

# Choices of classes whose annotations are plain `str` (see the module docstring).
FOREIGN_CHOICES: dict[type, dict[str, tuple[str, ...]]] = {
    AdaptiveConfig: {
        "switches": SWITCH_KINDS,
        "selection": SELECTION_RULES,
        "scheduler": SCHEDULER_KINDS,
        "token_selection": TOKEN_SELECTIONS,
    }
}


# ---- reading a settings class ----------------------------------------------------------------------
def flag(path: str) -> str:
    """`adaptive.num_prefix_layers` -> `--adaptive.num-prefix-layers`."""
    return "--" + path.replace("_", "-")


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """The docstring written under each field of the dataclass `cls`, by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstrings win
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(klass)))
        body = tree.body[0].body
        for node, following in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


@dataclasses.dataclass(frozen=True)
class Setting:
    """One field as the mechanism sees it."""

    name: str
    path: str  # dotted, e.g. adaptive.rank
    kind: type  # bool, int, float, str, or a dataclass (nested)
    optional: bool
    many: bool  # tuple[kind, ...]
    choices: tuple | None
    field: dataclasses.Field

    @property
    def flag(self) -> str:
        return flag(self.path)

    @property
    def nested(self) -> bool:
        return dataclasses.is_dataclass(self.kind)

    @property
    def required(self) -> bool:
        return self.field.default is dataclasses.MISSING and self.field.default_factory is dataclasses.MISSING

    @property
    def default(self) -> Any:
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return self.field.default


@functools.cache
def settings_of(cls: type, prefix: str = "") -> tuple[Setting, ...]:
    """The fields of the dataclass `cls` (not nested ones' fields), typed."""
    hints = typing.get_type_hints(cls)
    foreign = FOREIGN_CHOICES.get(cls, {})
    out = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        hint, optional = _strip_none(hints[field.name])
        many = typing.get_origin(hint) in (tuple, list)
        if many:
            hint = typing.get_args(hint)[0]
        choices = None
        if typing.get_origin(hint) is Literal:
            choices = typing.get_args(hint)
            hint = type(choices[0])
        elif field.name in foreign:
            choices = tuple(foreign[field.name])
        if hint not in (bool, int, float, str) and not dataclasses.is_dataclass(hint):
            raise TypeError(
                f"{cls.__name__}.{field.name}: adallava.core.settings cannot handle the type "
                f"{hints[field.name]}"
            )
        out.append(Setting(field.name, prefix + field.name, hint, optional, many, choices, field))
    return tuple(out)


def paths(cls: type, prefix: str = "") -> dict[str, Setting]:
    """Every leaf setting of `cls`, nested ones included, by dotted path."""
    found: dict[str, Setting] = {}
    for setting in settings_of(cls, prefix):
        if setting.nested:
            found |= paths(setting.kind, setting.path + ".")
        else:
            found[setting.path] = setting
    return found


def _strip_none(hint: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); X -> (X, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def load(
    cls: type,
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    moved: Mapping[str, str] | None = None,
) -> Any:
    """Defaults < the YAML file `config` < `overrides` (keys dotted, `adaptive.rank`, or nested,
    `adaptive={"rank": 2}`)."""
    values: dict[str, Any] = {}
    source = "arguments"
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(
                f"{path}: expected a mapping of {cls.__name__} keys, got {type(loaded).__name__}"
            )
        values = _merge({}, loaded or {})
        source = str(path)
    overrides = overrides or {}
    _check_moved(overrides, moved, "arguments")
    return build(cls, _merge(values, overrides), source, moved=moved)


def build(
    cls: type,
    values: Mapping[str, Any],
    source: str = "arguments",
    *,
    prefix: str = "",
    moved: Mapping[str, str] | None = None,
) -> Any:
    """`cls(**values)` with each value converted to its field's type (YAML reads `1e-5` as a string)
    and checked against its choices; a nested mapping builds a nested dataclass. Unknown keys name the
    closest known key; old keys (`moved`) name their new place."""
    _check_moved(values, moved, source)
    settings = {s.name: s for s in settings_of(cls, prefix)}
    kwargs = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in settings:
            close = difflib.get_close_matches(name, list(settings), n=1)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
            raise ValueError(
                f"{source}: unknown key {prefix + str(key)!r}{hint} (known keys: {', '.join(settings)})"
            )
        setting = settings[name]
        if setting.nested and not (value is None and setting.optional):
            if isinstance(value, setting.kind):
                value = dataclasses.asdict(value)
            if not isinstance(value, Mapping):
                raise ValueError(
                    f"{source}: {setting.path} holds {setting.kind.__name__} keys, e.g. "
                    f"`{setting.path}: {{KEY: VALUE}}` in YAML or --{setting.path}.KEY VALUE; got {value!r}"
                )
            kwargs[name] = build(setting.kind, value, source, prefix=setting.path + ".")
        else:
            kwargs[name] = convert(value, setting)
    missing = [s.path for s in settings.values() if s.required and s.name not in kwargs]
    if missing:
        raise ValueError(f"{source}: missing required key(s) {', '.join(missing)}")
    if not prefix:
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except ValueError as error:  # the nested class's own checks do not know the flag names
        raise ValueError(f"{flag(prefix[:-1])}.*: {error}") from None


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated with `update`, recursively; dotted keys of `update` are nested paths."""
    merged = dict(base)
    for key, value in update.items():
        head, _, rest = str(key).replace("-", "_").partition(".")
        if rest:
            value = {rest: value}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and isinstance(merged.get(head), Mapping):
            merged[head] = _merge(merged[head], value)
        elif isinstance(value, Mapping):
            merged[head] = _merge({}, value)
        else:
            merged[head] = value
    return merged


def _check_moved(values: Mapping[str, Any], moved: Mapping[str, str] | None, source: str) -> None:
    old = [str(k).replace("-", "_") for k in values if str(k).replace("-", "_") in (moved or {})]
    if old:
        renames = ", ".join(f"{k} -> {moved[k]}" for k in old)
        raise ValueError(
            f"{source}: these keys moved (write them nested, e.g. `adaptive: {{switches: head}}`, or as "
            f"flags such as --adaptive.switches; docs/training.md): {renames}"
        )


def convert(value: Any, setting: Setting) -> Any:
    """A YAML or command-line value as the setting's type; a ValueError naming the flag otherwise."""
    name = setting.flag
    choices = setting.choices or ()
    empty = isinstance(value, str) and value.lower() in ("none", "null") and value not in choices
    if value is None or (setting.optional and empty):
        if setting.optional:
            return None
        raise ValueError(f"{name} may not be empty")
    if setting.many:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} expects a list (A,B,...), got {value!r}")
        items = tuple(_scalar(item, setting) for item in value)
        for item in items:
            if choices and item not in choices:
                raise ValueError(f"{name} must be among {', '.join(map(str, choices))}; got {item!r}")
        return items
    item = _scalar(value, setting)
    if choices and item not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {item!r}")
    return item


def _scalar(value: Any, setting: Setting) -> Any:
    name, kind = setting.flag, setting.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"{name} expects true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{name} expects an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} expects an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"{name} expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} expects a number, got {value!r}") from None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} expects text, got {value!r}")
    return str(value)


# ---- checks for __post_init__ ----------------------------------------------------------------------
def check_choices(obj: Any) -> None:
    """For `__post_init__`: every field with choices holds one of them (tuple fields: each item;
    a list becomes a tuple, a bare string is refused). Errors name the flag and the allowed values."""
    for setting in settings_of(type(obj)):
        if setting.choices is None:
            continue
        value = getattr(obj, setting.name)
        if value is None and setting.optional:
            continue
        if setting.many:
            if isinstance(value, str):
                raise ValueError(f"{setting.flag} must be a tuple of names, got the string {value!r}")
            object.__setattr__(obj, setting.name, tuple(value))
            for item in value:
                if item not in setting.choices:
                    allowed = ", ".join(map(str, setting.choices))
                    raise ValueError(f"{setting.flag} must be among {allowed}; got {item!r}")
        elif value not in setting.choices:
            raise ValueError(
                f"{setting.flag} must be one of {', '.join(map(str, setting.choices))}; got {value!r}"
            )


def check(obj: Any, name: str, ok: bool, requirement: str) -> None:
    """For `__post_init__`: `ValueError("--name requirement; got value")` unless ok."""
    if not ok:
        raise ValueError(f"{flag(name)} {requirement}; got {getattr(obj, name)!r}")


def to_dict(obj: Any) -> dict[str, Any]:
    """The settings as plain YAML-able data (nested mappings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(obj))


__all__ = [
    "FOREIGN_CHOICES",
    "Setting",
    "build",
    "check",
    "check_choices",
    "convert",
    "field_help",
    "flag",
    "load",
    "paths",
    "settings_of",
    "to_dict",
]
