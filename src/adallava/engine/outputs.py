"""What the adaptive models return: typed outputs with each row's plan, budget and costs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from adallava.core.cost.pricing import BatchCost
from adallava.core.plan import ExecutionPlan
from adallava.engine import hf_compat


@hf_compat.cache_output
class AdaLlavaOutput(hf_compat.ModelOutputBase):
    """Output of `forward` (AdaLlava and AdaLLM).

    logits: [B, T', vocab] (T' = T + 1 when a latency token was inserted); loss: scalar NLL over answer
    tokens; plan: the executed plan (None in base mode); budget: float64 [B] fractions that were
    asked for; latency_positions: long [B] index of each row's latency token (None if none);
    scheduler_logits: float32 [B, switches]; cost / full_cost: `BatchCost`, per-row FLOPs of what
    ran (`.vision`, `.llm`, `.lm_head`, `.total`: float64 [B]) and of the full plan on the same
    tokens. A prefill is priced as a prefill; a call with a KV cache as decoding steps.
    cache: the KV cache, under the name the installed transformers uses (`cache` from 5.24,
    `past_key_values` before; `hf_compat.output_cache(out)` reads either).
    attention_mask / position_ids: the layout the prefill actually ran when it differs from the input
    (a latency token inserted, or visual tokens selected); later steps must continue from it.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: object | None = None
    plan: ExecutionPlan | None = None
    budget: torch.Tensor | None = None
    latency_positions: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    scheduler_logits: torch.Tensor | None = None
    cost: BatchCost | None = None
    full_cost: BatchCost | None = None


@dataclass
class AdaGenerateOutput(hf_compat.GenerateOutput):
    """`generate(..., return_dict_in_generate=True)` output with each row's plan and costs:
    `prefill_cost` / `full_prefill_cost` (what the prefill ran, and would with every layer) and
    `decode_cost` (the row's decoding steps up to and including its end-of-sequence token).
    `prefill_tokens`: long [B] positions each row's prefill cached (prompt, latency token), so that
    `decode_cost` can price a row cut shorter than the batch (a server's per-request limit).
    `prefill_ms` / `decode_ms`: wall-clock of the prefill (up to the first new token) and of the
    decoding steps after it, for the whole batch. `deadline`: for deadline budgets, the
    `engine.deadlines.DeadlineReport` (predicted and measured ms, met, slowdown). `plan_changes`:
    [(k, later plan), ...] when a deadline request fell behind and dropped upper layers after its k-th
    token (`plan` is then the prefill's plan; `decode_cost` prices each part under its own plan).
    `speculative`: with `generate(..., speculative=...)`, the `SpeculativeReport` (drafted and accepted
    tokens, draft / verify / wasted FLOPs)."""

    plan: ExecutionPlan | None = None
    budget: torch.Tensor | None = None
    prefill_cost: BatchCost | None = None
    full_prefill_cost: BatchCost | None = None
    decode_cost: BatchCost | None = None
    prefill_tokens: torch.Tensor | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    deadline: object | None = None
    plan_changes: list | None = None
    speculative: SpeculativeReport | None = None


@dataclass
class SpeculativeReport:
    """What self-speculative decoding (`generate(..., speculative=...)`) drafted and computed, per row
    (tensors [B]). `draft_plan`: each row's draft plan; `shared_layers`: layers below the first where
    some row's draft and verify plans differ (their keys and hidden states were drafted once and
    reused by verification). `drafted` / `accepted`: draft tokens proposed / kept in the output;
    `rounds`: verification forwards. FLOPs (float64): `draft_flops` the draft steps (draft plan and
    LM head, the shared layers included), `verify_flops` the verification (the verify plan's layers
    from `shared_layers` up and the LM head, on every verified position); `spent_flops` both;
    `wasted_flops` what they computed beyond the output's `decode_cost` (what plain decoding spends on
    the same tokens): rejected drafts, the draft layers above the shared ones, verified positions
    thrown away. `decode_cost` stays the cost of the tokens the user got at the verify plan."""

    draft_plan: ExecutionPlan
    num_draft_tokens: int
    shared_layers: int
    drafted: torch.Tensor
    accepted: torch.Tensor
    rounds: torch.Tensor
    draft_flops: torch.Tensor
    verify_flops: torch.Tensor
    wasted_flops: torch.Tensor | None = None

    @property
    def acceptance_rate(self) -> torch.Tensor:
        """float64 [B]: accepted / drafted (NaN for a row that drafted nothing)."""
        return self.accepted.double() / self.drafted.double()

    @property
    def spent_flops(self) -> torch.Tensor:
        """float64 [B]: draft + verify FLOPs."""
        return self.draft_flops + self.verify_flops

    def with_decode_cost(self, decode_cost: BatchCost) -> SpeculativeReport:
        """This report with `wasted_flops` = spent - the decode cost of the tokens produced."""
        return dataclasses.replace(self, wasted_flops=self.spent_flops - decode_cost.total)
