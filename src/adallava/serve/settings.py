"""Settings: the server's batching and limits, one frozen dataclass; the docstring under each field is
its `adallava serve --help` text (`adallava.cli.flags` makes the flags)."""

from __future__ import annotations

from dataclasses import dataclass, fields

MiB = 2**20


@dataclass(frozen=True)
class Settings:
    """Batching, queueing and request limits of `adallava serve` (docs/serving.md lists the status
    code of each limit)."""

    max_batch_size: int = 8
    """most requests run together in one generate call"""
    batch_wait_ms: float = 5.0
    """after a request arrives, how long the batcher waits for others to join its batch"""
    max_queue: int = 64
    """requests waiting for the model beyond this are refused with 429"""
    retry_after_s: int = 1
    """Retry-After (seconds) sent with a 429"""
    request_timeout_s: float = 60.0
    """a request not answered within this many seconds gets a 504"""
    max_request_bytes: int = 16 * MiB
    """HTTP body size; larger: 413"""
    max_pending_bytes: int = 64 * MiB
    """request bodies (by Content-Length) being read and prepared at once; a request that would pass it
    waits for none: 429 (one request is always let in, whatever its size within --max-request-bytes)"""
    max_image_bytes: int = 8 * MiB
    """one image's decoded bytes; larger: 413"""
    max_image_pixels: int = 4096 * 4096
    """one image's width x height; larger: 413"""
    max_image_aspect_ratio: float = 20.0
    """one image's long side over its short side, checked from its header before decoding; larger: 400
    (the image processor scales the short side up to its input size, so a 1 x 100000 strip would
    become millions of pixels)"""
    max_processed_pixels: int = 2048 * 2048
    """one image's width x height as the model's image processor would resize it (before its crop),
    checked before it runs; larger: 413"""
    max_images: int = 1
    """images per request (LLaVA-1.5 is trained on one)"""
    max_messages: int = 256
    """messages per request; more: 400"""
    max_prompt_chars: int | None = None
    """characters of the messages' text, checked before tokenizing; more: 400 context_length_exceeded
    (default: 16 per prompt token allowed)"""
    max_prompt_tokens: int | None = None
    """prompt tokens, visual tokens included; longer: 400 context_length_exceeded (default: the model's
    context length)"""
    max_tokens_limit: int = 256
    """the largest max_tokens a request may ask for; larger: 400"""
    default_max_tokens: int | None = None
    """max_tokens of a request without one (default: the model's max_new_tokens, or 64)"""
    prepare_workers: int = 2
    """threads that read requests, decode images and tokenize (each with its own copy of the processor),
    beside the model's one worker"""
    graceful_timeout_s: float = 30.0
    """on shutdown, how long in-flight requests may take to finish"""
    speculative: bool = False
    """self-speculative decoding: a cheaper plan of the model drafts tokens that each request's own plan
    verifies, so answers are unchanged and decoding is faster where drafts are accepted (layer-switch
    models on the lean engine; batches with deadline budgets decode plainly). docs/speculative.md"""
    speculative_draft_tokens: int = 4
    """with --speculative: tokens drafted per round"""
    speculative_draft_budget: float | None = None
    """with --speculative: the draft plan's budget fraction (default: the prefix layers alone)"""

    def __post_init__(self) -> None:
        signed = ("batch_wait_ms", "retry_after_s", "speculative")
        positive = [f.name for f in fields(self) if f.name not in signed]
        for name in positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Settings.{name} (--{_flag(name)}) must be > 0, got {value!r}")
        for name in ("batch_wait_ms", "retry_after_s"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"Settings.{name} (--{_flag(name)}) must be >= 0, got {value!r}")
        if self.max_image_aspect_ratio < 1:
            raise ValueError(
                "Settings.max_image_aspect_ratio (--max-image-aspect-ratio) is a long side over a short "
                f"side: it must be >= 1, got {self.max_image_aspect_ratio!r}"
            )
        if self.speculative_draft_budget is not None and not 0 < self.speculative_draft_budget <= 1:
            raise ValueError(
                "Settings.speculative_draft_budget (--speculative-draft-budget) must be a fraction in "
                f"(0, 1], got {self.speculative_draft_budget!r}"
            )
        if self.default_max_tokens is not None and self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"Settings.default_max_tokens ({self.default_max_tokens}) must not exceed max_tokens_limit "
                f"({self.max_tokens_limit})"
            )


def _flag(name: str) -> str:
    return name.replace("_", "-")
