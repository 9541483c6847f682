"""The model side of the server: turn a parsed request into a prompt (with the token limits), and run a
batch of them through `answering.answer_batch` in the worker thread, streaming tokens as generate
makes them and timing the prefill and decoding of each row."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from jinja2 import TemplateError
from PIL import Image

from adallava.core.cost.pricing import full_llm_flops
from adallava.core.deadline import Deadline
from adallava.engine import hf_compat
from adallava.engine.lean.speculative import MAX_DRAFT_TOKENS, SpeculativeConfig
from adallava.engine.lean.weights import unsupported_reason
from adallava.inference.answering import Answer, Prompt, answer_batch, encode
from adallava.inference.prompts import conversation_prompt
from adallava.serve.batcher import TOKEN, Job
from adallava.serve.errors import bad_request, too_large
from adallava.serve.protocol import ModelCard, ParsedRequest, parse_body, parse_request
from adallava.serve.settings import Settings

FALLBACK_MAX_TOKENS = 64
CHARS_PER_TOKEN = 16  # --max-prompt-chars by default: generous (English is about 4 per token)


def processed_size(image_processor, width: int, height: int) -> tuple[int, int] | None:
    """(width, height) an image of `width` x `height` becomes when `image_processor` resizes it, before
    any crop: `size` as {"shortest_edge"} (CLIP, LLaVA-1.5: the short side scaled to it, the long
    side in proportion, capped by "longest_edge" if given), {"longest_edge"}, or {"height", "width"}.
    None for a processor that does not resize or that sizes images another way."""
    size = getattr(image_processor, "size", None)
    if size is None or not getattr(image_processor, "do_resize", True):
        return None
    read = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    shortest, longest = read("shortest_edge"), read("longest_edge")
    if read("height") and read("width"):
        return int(read("width")), int(read("height"))
    scale = None
    if shortest:
        scale = shortest / min(width, height)
        if longest:
            scale = min(scale, longest / max(width, height))
    elif longest:
        scale = longest / max(width, height)
    if scale is None:
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_no_image_tokens(processor, messages: list[dict]) -> None:
    """400 when a text part holds the processor's image token (e.g. "<image>"): typed text would
    otherwise become image placeholders with no image behind them."""
    token = getattr(processor, "image_token", None)
    if not token:
        return
    for index, message in enumerate(messages):
        if any(token in part.get("text", "") for part in message["content"]):
            raise bad_request(
                f"messages.{index}.content: the text holds {token!r}, the model's image placeholder; send "
                "images as image_url parts, not as text",
                param=f"messages.{index}.content",
                code="invalid_request",
            )


def check_processed_size(processor, image: Image.Image, limit: int, index: int) -> None:
    """413 `image_too_large` when the image processor would make more than `limit` pixels of `image`."""
    size = processed_size(getattr(processor, "image_processor", None), *image.size)
    if size is not None and size[0] * size[1] > limit:
        raise too_large(
            f"image {index}: the model's image processor would resize the {image.width}x{image.height} image "
            f"to {size[0]}x{size[1]} = {size[0] * size[1]} pixels; the limit is {limit} "
            "(--max-processed-pixels)",
            param="messages",
            code="image_too_large",
        )


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
    def speculative(self) -> dict | None:
        """{"drafted", "accepted"} tokens of this row under speculative decoding, else None."""
        return self.answer.speculative

    @property
    def unknown_words(self) -> list[str]:
        """The prompt's words the model's tokenizer read as its unknown token (for the report)."""
        return list(self.answer.unknown_words)


class ServedModel:
    """The served model and what the protocol needs to know about it. A model whose scheduler was never
    trained is served as a base model (no budgets), whatever `adaptive` says.

    Requests are read and prepared (JSON, images, chat template, tokenizer, limits) in a pool of
    `settings.prepare_workers` threads, each with its own copy of the processor (a fast tokenizer must
    not be entered concurrently), so no lock is shared and the event loop never does the work."""

    def __init__(self, model, processor, name: str, adaptive: bool, settings: Settings):
        self.model, self.processor, self.settings = model, processor, settings
        self.scheduler_trained = bool(getattr(model, "scheduler_trained", False))
        adaptive = adaptive and self.scheduler_trained
        self._local = threading.local()
        self.pool = ThreadPoolExecutor(settings.prepare_workers, thread_name_prefix="adallava-prepare")
        text_config = model.config.get_text_config()
        self.context_length = int(text_config.max_position_embeddings)
        self.max_prompt_tokens = settings.max_prompt_tokens or self.context_length
        configured = getattr(model.generation_config, "max_new_tokens", None)
        self.speculative = speculative_config(model, adaptive, settings)
        self.card = ModelCard(
            name=name,
            adaptive=adaptive,
            min_budget=float(model.b_min) if adaptive else 1.0,
            default_max_tokens=settings.default_max_tokens or configured or FALLBACK_MAX_TOKENS,
            max_prompt_chars=settings.max_prompt_chars or CHARS_PER_TOKEN * self.max_prompt_tokens,
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
            "speculative": self.speculative is not None,
        }

    def read(self, raw: bytes) -> tuple[ParsedRequest, Prompt]:
        """A prepare worker: the body's bytes -> the checked request and its prompt. Raises APIError."""
        body = parse_body(raw, self.settings.max_messages, self.card.max_prompt_chars)
        parsed = parse_request(body, self.card, self.settings)
        return parsed, self.prepare(parsed)

    def prepare(self, request: ParsedRequest) -> Prompt:
        """The request as the model's prompt; 400 / 413 when it does not fit: the images' processed size
        (before the image processor runs), the prompt's tokens, the context, a FLOPs cap below the
        prefix's cost."""
        processor = self._processor()
        check_no_image_tokens(processor, request.messages)
        for index, image in enumerate(request.images):
            check_processed_size(processor, image, self.settings.max_processed_pixels, index)
        try:
            text = conversation_prompt(processor, request.messages)
            prompt = encode(processor, text, request.images)
        except (ValueError, TemplateError) as error:  # e.g. a chat template refusing the roles' order
            raise bad_request(
                f"messages: cannot make the model's prompt: {error}", param="messages"
            ) from None
        limit = self.max_prompt_tokens
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
        self._check_flops_cap(request.budget, prompt)
        return prompt

    def _check_flops_cap(self, budget, prompt: Prompt) -> None:
        """A FLOPs cap against this prompt's full cost, as the model will convert it (prompt tokens plus
        the latency token): a cap below the prefix's cost is a 400 here, not a failed batch later.
        Skipped when the model selects visual tokens (PruMerge): its token count is known only then."""
        if budget is None or isinstance(budget, Deadline) or not (isinstance(budget, str) or budget > 1):
            return
        if prompt.pixel_values is not None and self.model.adaptive.token_selection != "none":
            return
        tokens = torch.tensor([prompt.num_tokens + 1])
        try:
            self.model.budgets.fractions(budget, 1, full_llm_flops(self.model.shape, tokens))
        except ValueError as error:
            message = str(error).replace(" for row 0", "")  # one request: the row is noise here
            raise bad_request(message, param="budget", code="invalid_budget") from None

    def _processor(self):
        """This thread's own copy of the processor."""
        processor = getattr(self._local, "processor", None)
        if processor is None:
            processor = self._local.processor = copy.deepcopy(self.processor)
        return processor

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def run(self, jobs: Sequence[Job]) -> list[Result]:
        """Worker thread: one greedy generate for the batch, each row under its own budget."""
        deadline_jobs = [job for job in jobs if isinstance(job.budget, Deadline)]
        if deadline_jobs:
            self.model.deadlines.profile  # noqa: B018 -- loaded (or measured, the first time) outside the batch's time
        start = time.perf_counter()
        fanout = TokenFanout(jobs, set(self.model.eos_token_ids))
        budgets = [remaining_deadline(job, start) for job in jobs]
        extra = {}
        if deadline_jobs:  # each deadline counts from its request's arrival: the rest is what is left now
            extra = {
                "deadline_start": start,
                "deadline_best_effort": all(j.best_effort for j in deadline_jobs),
            }
        if self.speculative is not None and not deadline_jobs:  # deadline batches decode plainly
            extra["speculative"] = self.speculative
        answers = answer_batch(
            self.model,
            self.processor,
            [job.prompt for job in jobs],
            budgets,
            [job.max_tokens for job in jobs],
            streamer=fanout,
            stopping_criteria=hf_compat.StoppingCriteriaList([Abandoned(jobs)]),
            **extra,
        )
        first = fanout.first_token or time.perf_counter()
        ended = [end or time.perf_counter() for end in fanout.ended]
        answers = [
            deadline_from_arrival(job, answer, start, end)
            for job, answer, end in zip(jobs, answers, ended, strict=True)
        ]
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


def speculative_config(model, adaptive: bool, settings: Settings) -> SpeculativeConfig | None:
    """The options of `--speculative` for this model (None: off), checked at startup: a model it cannot
    speculate on (head switches, a family the lean engine does not run) is an error naming the flag."""
    if not settings.speculative:
        return None
    reason = unsupported_reason(model.text_model)
    if reason is None and adaptive and model.adaptive.switches != "layer":
        reason = f"it plans {model.adaptive.switches} switches (AdaLLaVA-H); speculation needs layer plans"
    if reason is not None:
        raise ValueError(f"--speculative cannot serve this model: {reason}; drop --speculative")
    tokens, budget = settings.speculative_draft_tokens, settings.speculative_draft_budget
    if not 1 <= tokens <= MAX_DRAFT_TOKENS:
        raise ValueError(f"--speculative-draft-tokens must be in [1, {MAX_DRAFT_TOKENS}], got {tokens}")
    if budget is not None and budget < model.b_min:
        raise ValueError(
            f"--speculative-draft-budget must be in [{model.b_min:g}, 1] for this model (its prefix layers "
            f"always run), got {budget:g}"
        )
    return SpeculativeConfig(draft_budget=budget, num_draft_tokens=tokens)


def remaining_deadline(job: Job, now: float):
    """A job's budget for a batch starting at `now`: a deadline shortened by the time since the
    request arrived (what is left; a tiny positive amount when nothing is, which the planner refuses
    as infeasible unless best effort was asked for); other budgets as they are."""
    if not isinstance(job.budget, Deadline):
        return job.budget
    waited_ms = (now - (job.arrived or job.submitted)) * 1e3
    return Deadline(ms=max(job.budget.ms - waited_ms, 1e-3))


def deadline_from_arrival(job: Job, answer: Answer, start: float, end: float) -> Answer:
    """The answer's deadline report seen from the request's arrival: its own deadline, the time it
    waited before its batch, the prediction plus that wait, and the time from arrival to its last
    token (met or missed on that)."""
    if not isinstance(job.budget, Deadline) or answer.deadline is None:
        return answer
    arrived = job.arrived or job.submitted
    measured = (end - arrived) * 1e3
    waited = (start - arrived) * 1e3
    report = {
        **answer.deadline,
        "deadline_ms": job.budget.ms,
        "waited_ms": waited,
        "predicted_ms": answer.deadline["predicted_ms"] + waited,
        "measured_ms": measured,
        "met": measured <= job.budget.ms,
    }
    return dataclasses.replace(answer, deadline=report)


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
