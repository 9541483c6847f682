"""Generation for `adallava eval`: LLaVA-1.5's prompt for each item (in the model's chat template, or
LLaVA's v1 format), batches sorted by prompt length, and answers from `adallava.inference.answering`
(the path `adallava ask` and the server use) under the budget or explicit plan each method's provider
chooses. Times generation (and the prefill, for time to first token).

Sharding: under `accelerate launch` each process answers every num_processes-th item; answers are
gathered so that every process returns all of them, in item order.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image
from tqdm import tqdm

from adallava.eval.args import EvalArgs
from adallava.eval.benchmarks import Item
from adallava.eval.records import Sample
from adallava.inference.answering import Answer, Prompt, answer_batch, encode, prefill_batch
from adallava.inference.prompts import chat_template_owner, template_content_form

DEFAULT_MAX_NEW_TOKENS = 128  # LLaVA-1.5's model_vqa*.py default
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Timing:
    generate_s: float
    prefill_s: float | None
    answers: int


class Engine:
    """Prompts, batches and runs one model; `answer` gives the answers of a list of items."""

    def __init__(self, model, processor, args: EvalArgs, device: torch.device, state=None):
        self.model, self.processor, self.args, self.device = model, processor, args, torch.device(device)
        self.tokenizer = processor.tokenizer
        self.state = state
        self.dtype = getattr(torch, args.dtype)
        configured = getattr(model.generation_config, "max_new_tokens", None)
        self.max_new_tokens = args.max_new_tokens or configured or DEFAULT_MAX_NEW_TOKENS
        self.image_token = getattr(processor, "image_token", None) or IMAGE_TOKEN
        self._template = chat_template_owner(processor, args.prompt_format, "--prompt-format")
        self._form = self._probe_form() if self._template is not None else None
        self._warm = False

    # ---- prompts ----
    def _messages(self, prompt: str, image: bool, form: str) -> list[dict]:
        if form == "parts":
            parts = [{"type": "image"}] if image else []
            return [{"role": "user", "content": [*parts, {"type": "text", "text": prompt}]}]
        return [{"role": "user", "content": f"{self.image_token}\n{prompt}" if image else prompt}]

    def _probe_form(self) -> str:
        """Chat templates take content as typed parts or as a string with the image token inline."""
        probe = "adallava probe question"

        def renders(form: str) -> bool:
            text = self._template.apply_chat_template(
                self._messages(probe, True, form), tokenize=False, add_generation_prompt=True
            )
            return probe in text and text.count(self.image_token) == 1

        form = template_content_form(renders, ("parts", "text"))
        if form is None:
            raise ValueError("the chat template renders the image and question in neither content form; "
                             "use --prompt-format llava_v1")  # fmt: skip
        return form

    def prompt(self, sample: Sample) -> str:
        """The model input text: LLaVA-1.5's prompt in the model's chat template (or LLaVA's v1 format)."""
        image = sample.image is not None
        if self._template is None:
            image_part = f"{self.image_token}\n" if image else ""
            return f"USER: {image_part}{sample.prompt} ASSISTANT:"
        return self._template.apply_chat_template(
            self._messages(sample.prompt, image, self._form), tokenize=False, add_generation_prompt=True
        )

    def image(self, sample: Sample) -> Image.Image | None:
        if sample.image is None:
            return None
        try:
            source = io.BytesIO(sample.image) if isinstance(sample.image, bytes) else sample.image
            with Image.open(source) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as error:
            raise ValueError(
                f"question {sample.question_id}: cannot read its image {sample.image!r}: {error}"
            ) from None
        if self.args.pad_to_square:
            from adallava.data.conversation import expand_to_square

            mean = self.processor.image_processor.image_mean
            image = expand_to_square(image, tuple(int(255 * m) for m in mean))
        return image

    def encode(self, items: Sequence[Item]) -> list[Prompt]:
        """Each item's prompt, encoded with its image (pixel values in the evaluation's dtype)."""
        bos = self.tokenizer.bos_token
        prompts = []
        for item in items:
            text, image = self.prompt(item.sample), self.image(item.sample)
            # The template may write BOS itself.
            prompt = encode(self.processor, text, [] if image is None else [image],
                            add_special_tokens=not (bos and text.startswith(bos)))  # fmt: skip
            if prompt.pixel_values is not None:
                prompt = replace(prompt, pixel_values=prompt.pixel_values.to(self.dtype))
            prompts.append(prompt)
        return prompts

    # ---- generation ----
    def _timed(self, run, *args) -> tuple[object, float]:
        """run(*args) and its wall-clock seconds (CUDA work included)."""
        self._sync()
        start = time.perf_counter()
        result = run(self.model, self.processor, *args)
        self._sync()
        return result, time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def answer(
        self,
        benchmark: str,
        items: Sequence[Item],
        provider,
        budget: float,
        desc: str = "",
        leave: bool = True,
    ) -> tuple[list[Answer], Timing]:
        """Answers of every item (this process's shard, gathered on all processes), in item order."""
        rank, world = (self.state.process_index, self.state.num_processes) if self.state else (0, 1)
        shard = sorted(items[rank::world], key=lambda item: (len(item.sample.prompt), item.index))
        size = self.args.batch_size
        batches = [shard[i : i + size] for i in range(0, len(shard), size)]
        show = self.args.progress and rank == 0
        answers: list[tuple[int, Answer]] = []
        generate_s, prefill_s = 0.0, 0.0
        for batch in tqdm(
            batches, desc=desc, unit="batch", disable=not show, leave=leave, dynamic_ncols=True
        ):
            prompts = self.encode(batch)
            request = _request(provider.kwargs(benchmark, [item.key for item in batch], budget), len(batch))
            if not self._warm:  # first call: lazy initialisation, kernels, caches; not timed
                answer_batch(self.model, self.processor, prompts, request[0], [1] * len(batch), request[1])
                self._warm = True
            if self.args.measure_ttft:
                prefill_s += self._timed(prefill_batch, prompts, *request)[1]
            limits = [self.max_new_tokens] * len(batch)
            batch_answers, seconds = self._timed(answer_batch, prompts, request[0], limits, request[1])
            generate_s += seconds
            answers += [(item.index, answer) for item, answer in zip(batch, batch_answers, strict=True)]
        timing = Timing(generate_s, prefill_s if self.args.measure_ttft else None, len(shard))
        if world > 1:
            answers, timing = _gather(answers, timing)
        return [answer for _, answer in sorted(answers, key=lambda pair: pair[0])], timing


def _request(kwargs: dict, rows: int) -> tuple[list, object]:
    """(one budget per row, plan) from a provider's kwargs: {"budget"}, {"plan"} or {} (the full model)."""
    return [kwargs.get("budget")] * rows, kwargs.get("plan")


def _gather(answers: list, timing: Timing) -> tuple[list, Timing]:
    """Every process's (index, answer) pairs, and the timing summed over processes."""
    from accelerate.utils import gather_object

    answers = gather_object(answers)
    timings = gather_object([timing])
    timing = Timing(
        sum(t.generate_s for t in timings),
        None if timing.prefill_s is None else sum(t.prefill_s for t in timings),
        sum(t.answers for t in timings),
    )
    return answers, timing
