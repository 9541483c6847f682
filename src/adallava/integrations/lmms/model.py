"""`AdaLlavaLmms`: adallava as an lmms-eval model (a "simple" model: it receives each task's prompt
text and images, and applies its own chat template).

Each request becomes one row of `adallava.inference.answering.answer_batch`, the path `adallava ask`,
the server and `adallava eval` share: the prompt in the model's chat template with one image
placeholder per image, greedy decoding, a budget per row. The answer is cut at the task's first stop
string. What each answer cost travels with it into lmms-eval's per-sample log (`--log_samples`): the
`token_counts` of every sample hold `input_tokens`, `output_tokens` and an `adallava` entry with the
budget, the plan (layers run, head units for head switches) and the prefill / decode FLOPs.

Only `generate_until` is supported: every task that `adallava world export` writes generates. A task
that needs log-likelihoods or multi-round generation gets a NotImplementedError saying so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from adallava.core.deadline import Deadline
from adallava.inference.answering import Answer, answer_batch, check_scheduler_trained, encode
from adallava.inference.prompts import conversation_prompt
from adallava.integrations.lmms.generation import batches, cut_at_stop, resolve_budget, row_settings
from adallava.integrations.lmms.model_args import model_args
from adallava.io.hub import check_device, load_model

MODEL_NAME = "adallava"


@dataclass
class AnswerCounts(TokenCounts):
    """lmms-eval's per-sample token counts plus what the answer cost in adallava's terms (logged with
    `--log_samples` as the sample's `token_counts`)."""

    adallava: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "adallava": self.adallava}


def answer_record(answer: Answer, requested) -> dict:
    """The `adallava` entry of a sample's log: the budget asked for (`requested`: as written, or None for
    the full model) and the fraction it ran at, the plan, and FLOPs ({llm, total}: the decoder stack;
    everything with vision tower and lm_head) of the prefill, of the full model's prefill, and of
    decoding."""
    return {
        "budget": None if requested is None else _budget_text(requested),
        "fraction": answer.budget,
        "plan": answer.plan,
        "plan_key": answer.plan_key,
        "unit_fraction": answer.unit_fraction,
        "prefill_flops": answer.prefill_flops,
        "full_prefill_flops": answer.full_prefill_flops,
        "decode_flops": answer.decode_flops,
        "finish_reason": answer.finish_reason,
        "deadline": answer.deadline,
        "unknown_words": list(answer.unknown_words),
    }


def _budget_text(budget) -> float | str:
    if isinstance(budget, Deadline):
        return f"{budget.ms:g}ms"
    return budget


class AdaLlavaLmms(lmms):
    """lmms-eval model `adallava`. Keyword arguments are `--model_args` (see `model_args.ModelArgs`)."""

    is_simple = True

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.args = model_args(**kwargs)
        if self.args.device is not None:
            check_device(self.args.device)
        device = self.args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = getattr(torch, self.args.dtype)
        self._model, self.processor = load_model(self.args.pretrained, device=device, dtype=self.dtype)
        self.processor.tokenizer.padding_side = "left"
        self._device = torch.device(device)
        if self.args.switches is not None and self._model.adaptive.switches != self.args.switches:
            raise ValueError(
                f"adallava model_args switches={self.args.switches}: {self.args.pretrained!r} has "
                f"{self._model.adaptive.switches} switches (fixed by its training; pick a checkpoint with "
                f"{self.args.switches} switches, e.g. tiny-adallava-{self.args.switches[0]})"
            )
        if self.args.token_selection is not None:
            self._model.adaptive = replace(self._model.adaptive, token_selection=self.args.token_selection)
        if self.args.budget is not None:
            check_scheduler_trained(self._model, self.args.pretrained)
        self.batch_size_per_gpu = self.args.batch_size

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """As lmms-eval's, except that `--model_args` win over lmms-eval's own flags (batch_size, device),
        which it always passes: `batch_size=8` in model_args is not a clash with `--batch_size`'s default."""
        from lmms_eval.utils import simple_parse_args_string

        given = simple_parse_args_string(arg_string)
        flags = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in given}
        return cls(**given, **flags)

    @property
    def model(self):
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ---- requests -> rows ----
    def _prompt(self, context: str, images: list[Image.Image]):
        messages = [
            {
                "role": "user",
                "content": [*({"type": "image"} for _ in images), {"type": "text", "text": context}],
            }
        ]
        text = conversation_prompt(self.processor, messages)
        bos = self.processor.tokenizer.bos_token
        prompt = encode(self.processor, text, images, add_special_tokens=not (bos and text.startswith(bos)))
        if prompt.pixel_values is not None:
            prompt = replace(prompt, pixel_values=prompt.pixel_values.to(self.dtype))
        return prompt

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list[Image.Image]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        images = []
        for visual in visuals or []:
            if not isinstance(visual, Image.Image):
                raise NotImplementedError(
                    f"adallava takes images only; task {task!r} doc {doc_id} gave a {type(visual).__name__}"
                )
            images.append(visual.convert("RGB"))
        return images

    def generate_until(self, requests) -> list[GenerationResult]:
        """One greedy answer per request, in request order, each with its cost in `token_counts`."""
        trained = bool(getattr(self._model, "scheduler_trained", True))
        rows = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            settings = row_settings(gen_kwargs, self.args.max_new_tokens)
            budget = resolve_budget(settings.budget, self.args.budget, self.args.full_model, trained)
            prompt = self._prompt(context, self._visuals(doc_to_visual, task, split, doc_id))
            rows.append((prompt, settings, budget))
        if any(isinstance(budget, Deadline) for _, _, budget in rows):
            self._model.deadlines.profile  # noqa: B018 -- a saved profile, or a quick calibration, before any clock
        results: list[GenerationResult | None] = [None] * len(rows)
        groups = batches(
            [p.num_tokens for p, _, _ in rows], [b is not None for _, _, b in rows], self.batch_size
        )
        for group in tqdm(groups, desc="adallava", disable=self.rank != 0):
            extra = {"deadline_best_effort": True} if self.args.best_effort else {}
            answers = answer_batch(
                self._model,
                self.processor,
                [rows[i][0] for i in group],
                [rows[i][2] for i in group],
                [rows[i][1].max_new_tokens for i in group],
                deadline_start=time.perf_counter(),
                **extra,
            )
            for i, answer in zip(group, answers, strict=True):
                prompt, settings, budget = rows[i]
                counts = AnswerCounts(
                    input_tokens=prompt.num_tokens,
                    output_tokens=answer.completion_tokens,
                    adallava=answer_record(answer, budget),
                )
                results[i] = GenerationResult(
                    text=cut_at_stop(answer.text, settings.until), token_counts=counts
                )
        return results

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "adallava in lmms-eval supports generate_until tasks only (every task `adallava world export` "
            "writes generates); this task asks for log-likelihoods (output_type loglikelihood / "
            "multiple_choice)"
        )

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("adallava in lmms-eval supports single-round generate_until tasks only")
