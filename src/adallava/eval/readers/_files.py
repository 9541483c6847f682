"""Shared file access for the readers: every problem is a ValueError that names the file, the line
(for jsonl/tsv) or the JSON element, and the field."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def load_json(path: str | Path) -> Any:
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, object) per non-blank line; `where` reads "FILE, line N" for error messages."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
            yield where, item


def field(item: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """item[name], checked to be of `kind` (bool never passes for int)."""
    if name not in item:
        raise ValueError(f"{where}: field '{name}' is missing")
    value = item[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{where}: field '{name}' must be {expected}, got {value!r}")
    return value


def optional_field(item: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """Like `field`, but a missing or null field gives None."""
    if item.get(name) is None:
        return None
    return field(item, name, kind, where)


def json_list(data: Any, key: str | None, path: Path) -> list[Any]:
    """data[key] (or data itself when key is None), checked to be a list."""
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{path}: expected a JSON object with a '{key}' list")
        data = data[key]
    if not isinstance(data, list):
        raise ValueError(f"{path}: '{key or 'top level'}' must be a list, got {type(data).__name__}")
    return data


def element(items: list[Any], index: int, path: Path, key: str | None) -> tuple[str, dict[str, Any]]:
    """(where, item) for one element of a JSON list, checked to be an object."""
    where = f"{path}: {key or 'item'}[{index}]"
    item = items[index]
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
    return where, item


def reject_duplicate(seen: dict[Any, str], key: Any, where: str, what: str = "question_id") -> None:
    if key in seen:
        raise ValueError(f"{where}: duplicate {what} {key!r} (first seen at {seen[key]})")
    seen[key] = where
