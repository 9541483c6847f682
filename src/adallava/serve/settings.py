"""Settings: the server's batching and limits, one frozen dataclass whose field help is the CLI help."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

MiB = 2**20


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class Settings:
    """Batching, queueing and request limits of `adallava serve` (docs/serving.md lists the status
    code of each limit)."""

    max_batch_size: int = field(default=8, metadata=_help("most requests run together in one generate call"))
    batch_wait_ms: float = field(
        default=5.0,
        metadata=_help("after a request arrives, how long the batcher waits for others to join its batch"),
    )
    max_queue: int = field(
        default=64, metadata=_help("requests waiting for the model beyond this are refused with 429")
    )
    retry_after_s: int = field(default=1, metadata=_help("Retry-After (seconds) sent with a 429"))
    request_timeout_s: float = field(
        default=60.0, metadata=_help("a request not answered within this many seconds gets a 504")
    )
    max_request_bytes: int = field(default=16 * MiB, metadata=_help("HTTP body size; larger: 413"))
    max_image_bytes: int = field(default=8 * MiB, metadata=_help("one image's decoded bytes; larger: 413"))
    max_image_pixels: int = field(
        default=4096 * 4096, metadata=_help("one image's width x height; larger: 413")
    )
    max_images: int = field(default=1, metadata=_help("images per request (LLaVA-1.5 is trained on one)"))
    max_prompt_tokens: int | None = field(
        default=None,
        metadata=_help(
            "prompt tokens, visual tokens included; longer: 400 context_length_exceeded "
            "(default: the model's context length)"
        ),
    )
    max_tokens_limit: int = field(
        default=256, metadata=_help("the largest max_tokens a request may ask for; larger: 400")
    )
    default_max_tokens: int | None = field(
        default=None,
        metadata=_help("max_tokens of a request without one (default: the model's max_new_tokens, or 64)"),
    )
    graceful_timeout_s: float = field(
        default=30.0, metadata=_help("on shutdown, how long in-flight requests may take to finish")
    )

    def __post_init__(self) -> None:
        positive = [f.name for f in fields(self) if f.name not in ("batch_wait_ms", "retry_after_s")]
        for name in positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Settings.{name} (--{_flag(name)}) must be > 0, got {value!r}")
        for name in ("batch_wait_ms", "retry_after_s"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"Settings.{name} (--{_flag(name)}) must be >= 0, got {value!r}")
        if self.default_max_tokens is not None and self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"Settings.default_max_tokens ({self.default_max_tokens}) must not exceed max_tokens_limit "
                f"({self.max_tokens_limit})"
            )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One `--flag` per field, typed and documented from the field."""
        for f in fields(cls):
            kind = float if isinstance(f.default, float) else int
            parser.add_argument(
                f"--{_flag(f.name)}",
                type=kind,
                default=f.default,
                help=f"{f.metadata['help']} (default: %(default)s)",
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def _flag(name: str) -> str:
    return name.replace("_", "-")
