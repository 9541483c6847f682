"""The model side of the server: turn a parsed request into a prompt (with the token limits), and run a
batch of them through `answering.answer_batch` in the worker thread, streaming tokens as generate
makes them and timing the prefill and decoding of each row."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adallava.engine import hf_compat
from adallava.inference.answering import Answer, Prompt, answer_batch, encode
from adallava.inference.prompts import conversation_prompt
from adallava.serve.batcher import TOKEN, Job
from adallava.serve.errors import bad_request
from adallava.serve.protocol import ModelCard, ParsedRequest
from adallava.serve.settings import Settings

FALLBACK_MAX_TOKENS = 64


@dataclass(frozen=True)
class Result:
    """One request's answer with its timings (ms): waiting for its batch, its batch's prefill, and
    its own decoding steps (up to its last token)."""

    answer: Answer
    queue_ms: float
    prefill_ms: float
    decode_ms: float
    batch_size: int

    @property
    def unknown_words(self) -> list[str]:
        """The prompt's words the model's tokenizer read as its unknown token (for the report)."""
        return list(self.answer.unknown_words)


class ServedModel:
    """The served model and what the protocol needs to know about it. A model whose scheduler was never
    trained is served as a base model (no budgets), whatever `adaptive` says."""

    def __init__(self, model, processor, name: str, adaptive: bool, settings: Settings):
        self.model, self.processor, self.settings = model, processor, settings
        self.scheduler_trained = bool(getattr(model, "scheduler_trained", False))
        adaptive = adaptive and self.scheduler_trained
        # Requests are prepared in a thread pool; a fast tokenizer must not be entered concurrently.
        self._processor_lock = threading.Lock()
        text_config = model.config.get_text_config()
        self.context_length = int(text_config.max_position_embeddings)
        configured = getattr(model.generation_config, "max_new_tokens", None)
        self.card = ModelCard(
            name=name,
            adaptive=adaptive,
            min_budget=float(model.b_min) if adaptive else 1.0,
            default_max_tokens=settings.default_max_tokens or configured or FALLBACK_MAX_TOKENS,
        )

    def describe(self) -> dict:
        """The `adallava` entry of /v1/models: what a client needs to pick budgets."""
        return {
            "adaptive": self.card.adaptive,
            "scheduler_trained": self.scheduler_trained,
            "switches": self.model.adaptive.switches if self.card.adaptive else None,
            "num_layers": self.model.num_layers,
            "num_prefix_layers": self.model.num_prefix if self.card.adaptive else self.model.num_layers,
            "min_budget": self.card.min_budget,
            "context_length": self.context_length,
            "max_images": self.settings.max_images,
            "default_max_tokens": self.card.default_max_tokens,
            "max_tokens_limit": self.settings.max_tokens_limit,
        }

    def prepare(self, request: ParsedRequest) -> Prompt:
        """The request as the model's prompt; 400 when it does not fit the context or the limit."""
        try:
            with self._processor_lock:
                text = conversation_prompt(self.processor, request.messages)
                prompt = encode(self.processor, text, request.images)
        except ValueError as error:  # e.g. a chat template that cannot place the image
            raise bad_request(
                f"messages: cannot make the model's prompt: {error}", param="messages"
            ) from None
        limit = self.settings.max_prompt_tokens or self.context_length
        latency_token = 1 if self.card.adaptive else 0
        if prompt.num_tokens > limit:
            raise bad_request(
                f"the prompt is {prompt.num_tokens} tokens (visual tokens included); the limit is {limit}",
                param="messages",
                code="context_length_exceeded",
            )
        if prompt.num_tokens + latency_token + request.max_tokens > self.context_length:
            raise bad_request(
                f"the prompt ({prompt.num_tokens} tokens) plus max_tokens ({request.max_tokens}) exceeds the "
                f"model's context of {self.context_length} tokens; ask for at most "
                f"{max(0, self.context_length - prompt.num_tokens - latency_token)} new tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return prompt

    def run(self, jobs: Sequence[Job]) -> list[Result]:
        """Worker thread: one greedy generate for the batch, each row under its own budget."""
        start = time.perf_counter()
        fanout = TokenFanout(jobs, set(self.model.eos_token_ids))
        answers = answer_batch(
            self.model,
            self.processor,
            [job.prompt for job in jobs],
            [job.budget for job in jobs],
            [job.max_tokens for job in jobs],
            streamer=fanout,
            stopping_criteria=hf_compat.StoppingCriteriaList([Abandoned(jobs)]),
        )
        first = fanout.first_token or time.perf_counter()
        return [
            Result(
                answer=answer,
                queue_ms=(start - job.submitted) * 1e3,
                prefill_ms=(first - start) * 1e3,
                decode_ms=((ended or first) - first) * 1e3,
                batch_size=len(jobs),
            )
            for job, answer, ended in zip(jobs, answers, fanout.ended, strict=True)
        ]


class TokenFanout(hf_compat.BaseStreamer):
    """Receives each step's tokens [B] from `generate`, sends each streaming row its own tokens (up to
    its end-of-sequence token or its max_tokens) and notes when the prefill ended and each row did."""

    def __init__(self, jobs: Sequence[Job], eos: set[int]):
        self.jobs, self.eos = jobs, eos
        self.counts = [0] * len(jobs)
        self.ended: list[float | None] = [None] * len(jobs)
        self.first_token: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:  # generate hands over the prompt [B, T] first
            return
        now = time.perf_counter()
        self.first_token = self.first_token or now
        for row, token in enumerate(value.tolist()):
            job = self.jobs[row]
            if self.ended[row] is not None:
                continue
            self.counts[row] += 1
            if token in self.eos or self.counts[row] >= job.max_tokens:
                self.ended[row] = now
            if token not in self.eos and job.stream and self.counts[row] > job.streamed:
                job.streamed = self.counts[row]
                job.emit(TOKEN, token)

    def end(self) -> None:
        now = time.perf_counter()
        self.ended = [now if ended is None else ended for ended in self.ended]


class Abandoned(hf_compat.StoppingCriteria):
    """Stops the rows whose client gave up, so a batch whose clients all left ends early."""

    def __init__(self, jobs: Sequence[Job]):
        self.jobs = jobs

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor([job.cancelled for job in self.jobs], device=input_ids.device)
