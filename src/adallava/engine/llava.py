"""AdaLlava: a Hugging Face Llava that runs, per request, only the upper layers its scheduler picks.

Three modes of one model (DESIGN.md):
- `budget=None, plan=None`: exactly the wrapped `LlavaForConditionalGeneration` (no latency token);
- `plan=...`: run that plan (baselines: early exit, random, static), no scheduler, no latency token;
- `budget=...`: the latency token is inserted after each row's prompt, the scheduler reads it at the
  input of layer P and picks the plan; the plan is then reused for every decoded token.

The HF model is held by composition (`self.base`); its decoder layers, rotary tables, masks, norm and
head are called as they are. Checkpoints are a plain HF Llava folder plus two adaptive files, so
`LlavaForConditionalGeneration.from_pretrained` still loads the base model from them.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaConfig, LlavaForConditionalGeneration

from adallava.core.budget import budget_fractions, min_fraction, upper_units_for_fraction
from adallava.core.config import AdaptiveConfig
from adallava.core.cost.pricing import (
    BatchCost,
    full_llm_flops,
    price_decode,
    price_decode_step,
    price_prefill,
)
from adallava.core.cost.shapes import ModelShape
from adallava.core.geometry import geometry_of
from adallava.core.plan import ExecutionPlan
from adallava.core.planning import Planner
from adallava.engine import hf_compat
from adallava.engine.cache_slots import CacheSlots
from adallava.engine.stack import call_layer, prepare_layer_inputs
from adallava.engine.switches.head import run_layer_head_plan
from adallava.engine.switches.layer import run_layer_gated, run_layer_skipping
from adallava.engine.tokens.selection import select_image_tokens, splice_image_tokens
from adallava.modules.gates import UnitGates
from adallava.modules.latency import (
    IGNORE_INDEX,
    LatencyEncoder,
    insert_at,
    insert_position_ids,
    latency_positions,
)
from adallava.modules.scheduler_head import SchedulerHead
from adallava.modules.sliced import SliceCache

ADAPTIVE_CONFIG_FILE = "adaptive_config.json"
ADAPTIVE_WEIGHTS_FILE = "adaptive.safetensors"


@hf_compat.cache_output
class AdaLlavaOutput(hf_compat.ModelOutputBase):
    """Output of `AdaLlava.forward`.

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
    `AdaLlava.decode_cost` can price a row cut shorter than the batch (a server's per-request limit)."""

    plan: ExecutionPlan | None = None
    budget: torch.Tensor | None = None
    prefill_cost: BatchCost | None = None
    full_prefill_cost: BatchCost | None = None
    decode_cost: BatchCost | None = None
    prefill_tokens: torch.Tensor | None = None


class AdaLlava(hf_compat.GenerativeModel):
    config_class = LlavaConfig
    main_input_name = "input_ids"
    base_model_prefix = "base"

    def __init__(
        self,
        config: LlavaConfig,
        adaptive: AdaptiveConfig | None = None,
        base: LlavaForConditionalGeneration | None = None,
    ):
        super().__init__(config)
        self.base = base if base is not None else self._new_base(config)
        self.text_config = text_config = config.get_text_config()
        self.num_layers = text_config.num_hidden_layers
        self.adaptive = (adaptive or AdaptiveConfig()).resolve(self.num_layers)
        self.num_prefix = self.adaptive.num_prefix_layers
        self.shape = ModelShape.from_config(config)
        self.slices = SliceCache()  # sliced layers of head plans, built once per plan
        # How head plans run at inference: "sliced" (rows grouped by plan, each group on weights
        # sliced to its plan) or "masked" (every row runs full layers with off units zeroed; no
        # saving, but one batched matmul whatever the mix of plans). See benchmarks/bench_heads.py.
        self.head_execution = "sliced"
        upper = self.num_layers - self.num_prefix
        if self.adaptive.switches == "head":
            self.geometry = geometry_of(text_config, self.adaptive.mlp_groups)
            head_units, groups, rank = self.geometry.head_units, self.geometry.mlp_groups, self.adaptive.rank
            if head_units % rank:
                raise ValueError(
                    f"AdaptiveConfig.rank must divide the {head_units} head units per layer, got {rank}"
                )
            if self.adaptive.selection == "official" and groups != head_units:
                raise ValueError(
                    f"the official head selection needs mlp_groups == head units ({head_units}), got {groups}"
                )
            # Budget units as the official checkpoints count them: `rank` head units per unit.
            self.total_units, self.prefix_units = (
                self.num_layers * head_units // rank,
                self.num_prefix * head_units // rank,
            )
            num_switches = upper * (head_units + groups)
        else:
            self.geometry = geometry_of(text_config, None)
            self.total_units, self.prefix_units = self.num_layers, self.num_prefix
            num_switches = upper
        self.planner = Planner(self.adaptive, self.num_layers, self.num_prefix, self.geometry, self.shape)
        self.latency_encoder = LatencyEncoder(text_config.hidden_size, self.adaptive.latency_frequencies)
        self.scheduler = SchedulerHead(text_config.hidden_size, num_switches)
        self._init_adaptive_weights(text_config.initializer_range)
        self.post_init()

    def _init_adaptive_weights(self, std: float) -> None:
        for module in [*self.latency_encoder.modules(), *self.scheduler.modules()]:
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=std)
                torch.nn.init.zeros_(module.bias)

    # ---- construction, save, load --------------------------------------------------------------
    @classmethod
    def from_base(
        cls, base: LlavaForConditionalGeneration, adaptive: AdaptiveConfig | None = None
    ) -> AdaLlava:
        """Make a HF Llava adaptive. The base modules are shared, not copied; the scheduler and
        latency encoder are freshly initialised (on the base model's device and dtype)."""
        cls._check_base(base)
        model = cls(base.config, adaptive, base=base)
        model.generation_config = base.generation_config
        reference = next(base.parameters())
        model.latency_encoder.to(reference.device)
        model.scheduler.to(reference.device)
        return model.train(base.training)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """A HF Llava folder (config.json, model.safetensors, generation_config.json) plus
        adaptive_config.json and adaptive.safetensors. Safetensors only."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        kwargs.pop("safe_serialization", None)
        self.base.save_pretrained(directory, **kwargs)
        (directory / ADAPTIVE_CONFIG_FILE).write_text(json.dumps(self.adaptive.to_dict(), indent=2) + "\n")
        tensors = {f"latency_encoder.{k}": v for k, v in self.latency_encoder.state_dict().items()}
        tensors |= {f"scheduler.{k}": v for k, v in self.scheduler.state_dict().items()}
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(directory / ADAPTIVE_WEIGHTS_FILE),
            metadata={"format": "pt", "library": "adallava"},
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> AdaLlava:
        """Load a folder written by `save_pretrained` (offline). Extra kwargs go to
        `LlavaForConditionalGeneration.from_pretrained` (e.g. dtype, attn_implementation, device_map)."""
        directory = Path(path)
        config_file = directory / ADAPTIVE_CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{directory} has no {ADAPTIVE_CONFIG_FILE}: it is not an adallava checkpoint. To make a HF "
                "Llava adaptive use "
                "AdaLlava.from_base(LlavaForConditionalGeneration.from_pretrained(path), AdaptiveConfig())"
            )
        adaptive = AdaptiveConfig.from_dict(json.loads(config_file.read_text()))
        base = cls._load_base(directory, **kwargs)
        model = cls.from_base(base, adaptive)
        state = load_file(str(directory / ADAPTIVE_WEIGHTS_FILE))
        for prefix, module in (("latency_encoder.", model.latency_encoder), ("scheduler.", model.scheduler)):
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(part, strict=True)
        reference = next(base.parameters())
        model.latency_encoder.to(reference.device)
        model.scheduler.to(reference.device)
        return model.eval()

    # ---- the head-plan slice cache follows the weights (see heads.SliceCache) -------------------
    # Sliced layers hold copies of weights, outside the module tree: drop them whenever the module
    # tree's weights may have been replaced, moved or converted. (In-place edits made any other way
    # are caught by the fingerprint each cache entry keeps.)
    def _apply(self, fn, *args, **kwargs):
        # .to / .cuda / .half ...: new dtype or device. Cleared here, not left to the fingerprints: a
        # round trip (.half().float()) can put the new weights at the old address (the CUDA caching
        # allocator reuses freed blocks) with the old version count, indistinguishable from before.
        result = super()._apply(fn, *args, **kwargs)
        self.slices.clear()
        return result

    def train(self, mode: bool = True):
        result = super().train(mode)  # sliced attention clones keep the flag they were built with
        self.slices.clear()
        return result

    def load_state_dict(self, state_dict, *args, **kwargs):
        result = super().load_state_dict(state_dict, *args, **kwargs)
        self.slices.clear()
        return result

    # ---- budgets ------------------------------------------------------------------------------
    @property
    def b_min(self) -> float:
        """The smallest fraction a budget may be: the prefix layers' share of the decoder stack."""
        return min_fraction(self.num_layers, self.num_prefix)

    def units_for(self, fractions: torch.Tensor) -> torch.Tensor:
        """Budget units each row's fraction buys: n = floor(Nu * b) - Pu (DESIGN.md). For layer
        switches these are upper layers; for head switches, groups of `rank` head units. long [B]."""
        return torch.tensor(
            [upper_units_for_fraction(self.total_units, self.prefix_units, float(f)) for f in fractions],
            dtype=torch.long,
        )

    # ---- forward ------------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        budget=None,
        plan: ExecutionPlan | None = None,
        sample_plan: bool = False,
        generator: torch.Generator | None = None,
        adallava_sink: dict | None = None,
        cache=None,
        **kwargs,
    ) -> AdaLlavaOutput:
        """One forward pass. budget: a fraction in [b_min, 1] or an absolute FLOPs cap ("3.5T"), one
        for the batch or one per row; plan: an explicit ExecutionPlan; both None: the base model.
        `sample_plan` draws the plan from the scheduler (seeded by `generator`) instead of taking the
        most probable one. `adallava_sink` is internal to `generate` (it collects prefill results).
        The KV cache may be given as `cache` or `past_key_values` (transformers' name changed in 5.24)."""
        past_key_values = hf_compat.resolve_cache(past_key_values, cache)
        if budget is not None and plan is not None:
            raise ValueError("give either a budget (the scheduler picks the plan) or a plan, not both")
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        # Inside `generate`, decoding steps are priced once at the end rather than at every token.
        priced = adallava_sink is None or past_length == 0
        selecting = self.adaptive.token_selection != "none" and pixel_values is not None and past_length == 0
        if budget is None and plan is None and not selecting:
            return self._base_forward(
                input_ids, pixel_values, attention_mask, position_ids, past_key_values, inputs_embeds, labels,
                use_cache, logits_to_keep, past_length, priced, adallava_sink, **kwargs,
            )  # fmt: skip

        if selecting:  # PruMerge(+): each row keeps its own number of visual tokens; rows re-laid out
            hidden, attention_mask, labels, image_tokens = self._embed_selected(
                input_ids, pixel_values, inputs_embeds, attention_mask, labels
            )
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T'] the new layout's
            if budget is None and plan is None:
                plan = ExecutionPlan.full(hidden.shape[0], self.num_layers)
        else:
            hidden = self._embed(input_ids, pixel_values, inputs_embeds)  # [B, T, D]
        batch, length = hidden.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_length + length, dtype=torch.long, device=hidden.device)
        if not selecting:
            image_tokens = self._image_token_counts(
                input_ids, attention_mask.sum(-1).cpu(), pixel_values is not None
            )
        if position_ids is None:  # as HF: positions continue the cache
            position_ids = torch.arange(past_length, past_length + length, device=hidden.device)[None]
        position_ids = position_ids.expand(batch, -1)

        fractions = lat_positions = scheduler_logits = gates = latency_loss = None
        if budget is not None:
            if past_length > 0:
                raise ValueError(
                    "a budget is turned into a plan at prefill; for later steps pass plan=out.plan"
                )
            # The request's tokens include its latency token; absolute caps are converted against that.
            full_llm = full_llm_flops(self.shape, attention_mask.sum(-1).cpu() + 1)
            fractions = budget_fractions(budget, batch, self.b_min, full_llm)
            units = self.units_for(fractions).to(hidden.device)  # [B]
            lat_positions = latency_positions(attention_mask, labels)  # [B]
            token = self.latency_encoder(units, self.total_units, self.prefix_units).to(
                hidden.dtype
            )  # [B, D]
            hidden = insert_at(hidden, lat_positions, token)  # [B, T+1, D]
            attention_mask = insert_at(attention_mask, lat_positions, 1)
            position_ids = insert_position_ids(position_ids, lat_positions)
            if labels is not None:
                labels = insert_at(labels, lat_positions, IGNORE_INDEX)
        else:
            plan = self._check_plan(plan, batch, hidden.device)

        if use_cache is None:
            use_cache = self.text_config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = hf_compat.new_cache(self.text_config)
        text_model = self.text_model
        inputs = prepare_layer_inputs(
            text_model, hidden, attention_mask, position_ids, past_key_values, use_cache
        )

        slots = CacheSlots(past_key_values if use_cache else None, self.num_layers)
        with ExitStack() as stack:
            unit_gates = None
            for index, layer in enumerate(text_model.layers[: self.num_layers]):
                if budget is not None and index == self.num_prefix:
                    rows = torch.arange(batch, device=hidden.device)
                    scheduler_logits = self.scheduler(hidden[rows, lat_positions])  # [B, switches]
                    tokens = attention_mask.sum(-1).cpu()  # [B] real tokens, latency token included
                    training = self.training and torch.is_grad_enabled()
                    if self.adaptive.scheduler == "deterministic":
                        plan, gates, latency_loss = self.planner.deterministic(
                            scheduler_logits, fractions, tokens, training=training
                        )
                    else:
                        plan, gates = self.planner.choose(
                            scheduler_logits, units, fractions, tokens,
                            training=training, sample=sample_plan, generator=generator,
                        )  # fmt: skip
                needs_gates = gates is not None or self.head_execution == "masked"
                if unit_gates is None and plan is not None and plan.heads is not None and needs_gates:
                    geometry = self._geometry_for(plan)
                    unit_gates = stack.enter_context(UnitGates(text_model.layers, geometry))
                hidden = self._run_layer(layer, index, hidden, inputs, plan, gates, unit_gates, slots)

        hidden = text_model.norm(hidden)
        kept = (
            slice(-logits_to_keep, None)
            if isinstance(logits_to_keep, int) and logits_to_keep > 0
            else slice(None)
        )
        logits = self.base.lm_head(hidden[:, kept])
        loss = None
        if labels is not None:
            loss = hf_compat.causal_lm_loss(self.base, logits, labels, self.text_config.vocab_size, **kwargs)
            if latency_loss is not None and gates is not None:  # deterministic scheduler, training
                loss = loss + self.adaptive.latency_loss_weight * latency_loss
        cost = full_cost = None
        if priced:
            args = (
                image_tokens,
                attention_mask,
                hidden.shape[1],
                past_length,
                logits_to_keep,
                pixel_values is not None,
            )
            images = torch.ones_like(image_tokens) if selecting else None  # one image per row, merged
            cost = self._price(*args, plan=plan, num_images=images)
            full_cost = self._price(*args, plan=None, num_images=images)
            self._record(adallava_sink, cost=cost, full_cost=full_cost, plan=plan, budget=fractions,
                         prefill_tokens=attention_mask.sum(-1).cpu())  # fmt: skip
        relaid = lat_positions is not None or selecting
        return AdaLlavaOutput(
            loss=loss,
            logits=logits,
            **hf_compat.cache_kwargs(past_key_values if use_cache else None),
            plan=plan,
            budget=fractions,
            latency_positions=lat_positions,
            scheduler_logits=scheduler_logits,
            cost=cost,
            full_cost=full_cost,
            attention_mask=attention_mask if relaid else None,
            position_ids=position_ids if relaid else None,
        )

    def _base_forward(
        self, input_ids, pixel_values, attention_mask, position_ids, past_key_values, inputs_embeds, labels,
        use_cache, logits_to_keep, past_length, priced, sink, **kwargs,
    ) -> AdaLlavaOutput:  # fmt: skip
        """The unmodified HF model (no latency token, no scheduler), plus the cost of what it ran."""
        if pixel_values is not None:  # text-only bases take no pixel_values argument at all
            kwargs["pixel_values"] = pixel_values
        out = self.base(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **hf_compat.cache_kwargs(past_key_values),
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        cost = None
        if priced:
            batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
            if attention_mask is None:
                attention_mask = torch.ones(batch, past_length + length, dtype=torch.long)
            with_vision = pixel_values is not None
            image_tokens = self._image_token_counts(input_ids, attention_mask.sum(-1).cpu(), with_vision)
            cost = self._price(image_tokens, attention_mask, length, past_length, logits_to_keep, with_vision)
            self._record(sink, cost=cost, full_cost=cost, plan=None, budget=None,
                         prefill_tokens=attention_mask.sum(-1).cpu())  # fmt: skip
        return AdaLlavaOutput(
            loss=out.loss,
            logits=out.logits,
            **hf_compat.cache_kwargs(hf_compat.output_cache(out)),
            cost=cost,
            full_cost=cost,
        )

    def _price(
        self,
        image_tokens: torch.Tensor,
        attention_mask,
        length: int,
        past_length: int,
        logits_to_keep,
        with_vision: bool,
        plan: ExecutionPlan | None = None,
        num_images: torch.Tensor | None = None,
    ) -> BatchCost:
        """Per-row FLOPs of this call: a prefill (empty cache) or `length` steps after the cache.
        image_tokens: long [B] visual tokens each row feeds the LLM (after any token selection)."""
        real = attention_mask.sum(-1).cpu()  # [B] real tokens so far, past included
        if past_length > 0:
            if length == 1:
                return price_decode_step(self.shape, real, plan)
            return price_decode(self.shape, real - length, torch.full_like(real, length), plan)
        keep = logits_to_keep if isinstance(logits_to_keep, int) and logits_to_keep > 0 else None
        logits_tokens = real if keep is None else real.clamp(max=keep)
        return price_prefill(self.shape, real, image_tokens, logits_tokens, plan, with_vision, num_images)

    @staticmethod
    def _record(sink: dict | None, **values) -> None:
        """Hand prefill results to `generate`, which sees only the generated ids otherwise."""
        if sink is not None and "cost" not in sink:
            sink.update(values)

    def _run_layer(self, layer, index, hidden, inputs, plan, gates, unit_gates, slots) -> torch.Tensor:
        """One decoder layer under the plan (see the module docstring of `switches`)."""
        if plan is None:  # budget mode, before the scheduler: the prefix runs for every row
            return call_layer(layer, hidden, index, inputs)
        upper = index - self.num_prefix
        if gates is not None and plan.heads is None:  # training, layer switches
            return run_layer_gated(layer, hidden, index, inputs, gates[:, upper])
        if gates is not None:  # training, head switches: unit outputs scaled by their switches
            unit_gates.set(index, gates[0][:, upper], gates[1][:, upper])
            return call_layer(layer, hidden, index, inputs)
        if plan.heads is None or bool(plan.heads[:, index].all() and plan.mlp[:, index].all()):
            return run_layer_skipping(layer, hidden, index, inputs, plan.layers[:, index])
        on = plan.layers[:, index, None]  # a layer switched off runs none of its units
        heads, mlp = plan.heads[:, index] & on, plan.mlp[:, index] & on
        if unit_gates is not None:  # the masked fallback: full compute, off units zeroed
            unit_gates.set(index, heads.to(hidden.dtype), mlp.to(hidden.dtype))
            return call_layer(layer, hidden, index, inputs)
        return run_layer_head_plan(
            layer, hidden, index, inputs, heads, mlp, self.slices, self._geometry_for(plan), slots
        )

    def _geometry_for(self, plan: ExecutionPlan):
        """Unit geometry of a head plan (explicit plans may use another number of MLP groups)."""
        groups = plan.mlp.shape[-1]
        if groups == self.geometry.mlp_groups:
            return self.geometry
        return geometry_of(self.text_config, groups)

    # ---- what differs between base model kinds (AdaLLM overrides these) ----------------------------
    @classmethod
    def _new_base(cls, config):
        return LlavaForConditionalGeneration(config)

    @classmethod
    def _load_base(cls, directory, **kwargs):
        return LlavaForConditionalGeneration.from_pretrained(directory, **kwargs)

    @classmethod
    def _check_base(cls, base) -> None:
        if not isinstance(base, LlavaForConditionalGeneration):
            raise TypeError(
                f"{cls.__name__}.from_base expects a LlavaForConditionalGeneration, got {type(base).__name__}"
            )

    @property
    def llava(self) -> LlavaForConditionalGeneration:
        """The wrapped Hugging Face Llava (shared, not copied)."""
        return self.base

    @property
    def text_model(self):
        """The HF decoder stack (embeddings, layers, rotary tables, final norm)."""
        return self.base.model.language_model

    def _image_token_counts(self, input_ids, real: torch.Tensor, with_vision: bool) -> torch.Tensor:
        """Image placeholders per row (for pricing the vision tower and projector). long [B]."""
        if input_ids is not None:
            return (input_ids == self.config.image_token_id).sum(-1).cpu()
        # embeddings given: one image per row when pixels came with them
        return torch.full_like(real, self.shape.image_tokens_per_image if with_vision else 0)

    def _embed_selected(self, input_ids, pixel_values, inputs_embeds, attention_mask, labels):
        """Embeddings with PruMerge(+)-selected visual tokens spliced in; rows are re-laid out left-padded.
        Returns (embeds [B, T', D], attention_mask [B, T'], labels or None, image tokens per row [B])."""
        if input_ids is None:
            raise ValueError("token selection needs input_ids (to find the image placeholders)")
        if inputs_embeds is None:
            inputs_embeds = self.base.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        images = select_image_tokens(self.base.model, pixel_values, self.adaptive.token_selection)
        embeds, mask, labels, counts = splice_image_tokens(
            inputs_embeds, input_ids, attention_mask, labels, images, self.config.image_token_id
        )
        return embeds, mask, labels, counts.cpu()

    def _embed(self, input_ids, pixel_values, inputs_embeds) -> torch.Tensor:
        """Token embeddings with image features scattered into the image-token slots, as HF Llava does."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        llava_model = self.base.model
        if inputs_embeds is None:
            inputs_embeds = llava_model.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            features = hf_compat.image_features(llava_model, pixel_values)
            features = features.to(inputs_embeds.device, inputs_embeds.dtype)  # [images * tokens, D]
            slots = hf_compat.image_slots(llava_model, input_ids, inputs_embeds, features)
            inputs_embeds = inputs_embeds.masked_scatter(slots, features)
        return inputs_embeds

    def _check_plan(self, plan: ExecutionPlan, batch: int, device: torch.device) -> ExecutionPlan:
        if not isinstance(plan, ExecutionPlan):
            raise TypeError(f"plan must be an ExecutionPlan, got {type(plan).__name__}")
        if plan.num_layers != self.num_layers:
            raise ValueError(f"plan covers {plan.num_layers} layers but the model has {self.num_layers}")
        if plan.heads is not None:
            units = self.geometry.head_units
            if plan.heads.shape[-1] != units:
                raise ValueError(
                    f"plan.heads has {plan.heads.shape[-1]} head units per layer; the model has {units}"
                )
            if plan.mlp.shape[-1] > self.text_config.intermediate_size:
                raise ValueError(f"plan.mlp has more groups ({plan.mlp.shape[-1]}) than MLP neurons")
        plan = plan.expand(batch).to(device)
        if not bool(plan.layers[:, 0].all()) or (
            plan.heads is not None and not bool(plan.heads[:, 0].all() and plan.mlp[:, 0].all())
        ):
            raise ValueError(
                "plan switches off (part of) layer 0 for some row; layer 0 must always run in full (it "
                "holds the sequence length of the KV cache)"
            )
        return plan

    # ---- generation ---------------------------------------------------------------------------
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        budget=None,
        plan: ExecutionPlan | None = None,
        **kwargs,
    ):
        """HF `generate` with a per-row budget (or plan). The plan is made once at prefill and reused
        for every new token. Right-padded batches are moved to left padding first (rows are rolled),
        so results do not depend on the padding side; returned sequences start with the prompt as
        given. With `return_dict_in_generate=True` the output (`AdaGenerateOutput`) also carries each
        row's plan, budget, prefill FLOPs and decode FLOPs."""
        if kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError(
                "adaptive generation supports one sequence per row (num_beams=1, num_return_sequences=1)"
            )
        if budget is not None and kwargs.get("use_cache") is False:
            raise ValueError("generation with a budget needs the KV cache (the latency token lives there); "
                             "drop use_cache=False")  # fmt: skip
        original_ids = input_ids
        if input_ids is not None and attention_mask is not None:
            input_ids, attention_mask = _to_left_padding(input_ids, attention_mask)
        sink: dict = {}
        out = super().generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            budget=budget,
            plan=plan,
            adallava_sink=sink,
            **kwargs,
        )
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        if original_ids is not None:
            sequences = torch.cat([original_ids, sequences[:, original_ids.shape[1] :]], dim=1)
        if isinstance(out, torch.Tensor):
            return sequences
        fields = {k: v for k, v in out.items() if k != "sequences"}
        new_tokens = out.sequences[:, input_ids.shape[1] :] if input_ids is not None else out.sequences
        return AdaGenerateOutput(
            sequences=sequences,
            plan=sink.get("plan", plan),
            budget=sink.get("budget"),
            prefill_cost=sink.get("cost"),
            full_prefill_cost=sink.get("full_cost"),
            decode_cost=(
                self.decode_cost(sink["prefill_tokens"], new_tokens, sink.get("plan"))
                if "cost" in sink
                else None
            ),
            prefill_tokens=sink.get("prefill_tokens"),
            **fields,
        )

    def decode_cost(
        self,
        prefill_tokens: torch.Tensor,
        new_tokens: torch.Tensor,
        plan: ExecutionPlan | None,
        limits: torch.Tensor | None = None,
    ) -> BatchCost:
        """FLOPs of each row's decoding steps. The prefill produced the first new token; each later
        token is one step, fed the previous token, up to the row's first end-of-sequence token (and
        at most `limits[b]` new tokens when given). prefill_tokens, limits: long [B]; new_tokens [B, G]."""
        produced = self.produced_tokens(new_tokens.cpu())  # [B]
        if limits is not None:
            produced = torch.minimum(produced, limits.cpu())
        return price_decode(self.shape, prefill_tokens, (produced - 1).clamp(min=0), plan)

    @property
    def eos_token_ids(self) -> list[int]:
        """The generation config's end-of-sequence ids (none, one or several)."""
        eos = self.generation_config.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def produced_tokens(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """long [B]: new tokens [B, G] up to and including each row's first end-of-sequence token."""
        is_eos = torch.isin(new_tokens, torch.tensor(self.eos_token_ids, dtype=torch.long))
        return torch.where(
            is_eos.any(-1),
            is_eos.float().argmax(-1) + 1,
            torch.full_like(new_tokens[:, 0], new_tokens.shape[1]),
        )

    def continue_generation(self, outputs, model_kwargs: dict) -> None:
        """After the prefill: freeze its plan for the remaining steps, and continue from the layout
        it ran (latency token inserted, visual tokens selected) rather than the prompt as given."""
        if getattr(outputs, "attention_mask", None) is not None:
            model_kwargs["attention_mask"] = outputs.attention_mask
            model_kwargs["position_ids"] = outputs.position_ids
        if getattr(outputs, "plan", None) is not None and model_kwargs.get("plan") is None:
            model_kwargs["budget"] = None
            model_kwargs["plan"] = outputs.plan


def _to_left_padding(
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
