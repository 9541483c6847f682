"""Scoring protocols. "llava" reproduces the scripts behind LLaVA-1.5's reported numbers (and the
official benchmark tools they call); "lmms-eval" reproduces EvolvingLMMs-Lab/lmms-eval's task utils
where those score differently. docs/benchmarks.md lists every difference with its source."""

from __future__ import annotations

from typing import Literal

Protocol = Literal["llava", "lmms-eval"]
PROTOCOLS: tuple[str, ...] = ("llava", "lmms-eval")


def check_protocol(protocol: str) -> Protocol:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    return protocol  # type: ignore[return-value]
