"""Generation helpers of the adaptive models: checks before HF `generate`, the move to left padding,
the output with plans and costs, and which new tokens a row produced (for pricing its decode)."""

from __future__ import annotations

import torch

from adallava.engine.outputs import AdaGenerateOutput


def check_generate_kwargs(budget, kwargs: dict) -> None:
    """Refuse what adaptive generation does not support, before any work is done."""
    if kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError(
            "adaptive generation supports one sequence per row (num_beams=1, num_return_sequences=1)"
        )
    if budget is not None and kwargs.get("use_cache") is False:
        raise ValueError("generation with a budget needs the KV cache (the latency token lives there); "
                         "drop use_cache=False")  # fmt: skip


def stop_token_ids(kwargs: dict, default: list[int]) -> list[int]:
    """The end-of-sequence ids a generate call stops at: an `eos_token_id` (or a `generation_config`)
    passed to it wins over the model's own (`default`), as in HF `generate`."""
    eos = kwargs.get("eos_token_id")
    if eos is None and kwargs.get("generation_config") is not None:
        eos = kwargs["generation_config"].eos_token_id
    if eos is None:
        return default
    return [eos] if isinstance(eos, int) else list(eos)


def to_left_padding(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll each row so that its padding comes first. Rows already left-padded are unchanged."""
    mask = attention_mask.bool()
    length = mask.shape[1]
    # A row is right-padded when a pad follows a real token; shift it right by its number of pads.
    trailing_pads = (~mask).flip(1).long().cumprod(1).sum(1)  # [B]
    if not bool(trailing_pads.any()):
        return input_ids, attention_mask
    index = (torch.arange(length, device=mask.device)[None, :] - trailing_pads[:, None]) % length  # [B, T]
    return input_ids.gather(1, index), attention_mask.gather(1, index)


def generate_output(model, out, original_ids, input_ids, plan, sink: dict, eos_token_ids: list[int]):
    """HF generate's output -> ours: sequences start with the prompt as the caller gave it (before
    any roll to left padding); a dict output also carries each row's plan, budget and costs (decoding
    priced up to each row's first id of `eos_token_ids`, the ids this call stopped at)."""
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    if original_ids is not None:
        sequences = torch.cat([original_ids, sequences[:, original_ids.shape[1] :]], dim=1)
    if isinstance(out, torch.Tensor):
        return sequences
    fields = {k: v for k, v in out.items() if k != "sequences"}
    new_tokens = out.sequences[:, input_ids.shape[1] :] if input_ids is not None else out.sequences
    decode = None
    if "cost" in sink:
        decode = model.decode_cost(
            sink["prefill_tokens"],
            new_tokens,
            sink.get("plan"),
            eos_token_ids=eos_token_ids,
            plan_changes=sink.get("plan_changes"),
        )
    return AdaGenerateOutput(
        sequences=sequences,
        plan=sink.get("plan", plan),
        budget=sink.get("budget"),
        prefill_cost=sink.get("cost"),
        full_prefill_cost=sink.get("full_cost"),
        decode_cost=decode,
        prefill_tokens=sink.get("prefill_tokens"),
        plan_changes=sink.get("plan_changes"),
        prefill_ms=sink.get("prefill_ms"),
        decode_ms=sink.get("decode_ms"),
        **fields,
    )


def produced_tokens(new_tokens: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """long [B]: new tokens [B, G] up to and including each row's first end-of-sequence token."""
    is_eos = torch.isin(new_tokens, torch.tensor(eos_token_ids, dtype=torch.long))
    return torch.where(
        is_eos.any(-1),
        is_eos.float().argmax(-1) + 1,
        torch.full_like(new_tokens[:, 0], new_tokens.shape[1]),
    )
