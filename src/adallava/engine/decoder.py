"""The adaptive decoder: a Hugging Face causal LM whose upper layers run per request under a plan.

Three modes of one model (DESIGN.md):
- `budget=None, plan=None`: exactly the wrapped HF model (no latency token);
- `plan=...`: run that plan (baselines: early exit, random, static), no scheduler, no latency token;
- `budget=...`: the latency token is inserted after each row's prompt, the scheduler reads it at the
  input of layer P and picks the plan; the plan is then reused for every decoded token.

`forward` is a pipeline of named stages over a `Pass` (the tensors of one call): embed the inputs,
insert the latency token or check the plan, run the prefix, plan, run the upper layers, head and
loss; pricing comes after, off the layers' path. Text-only models are this class (`AdaLLM`);
`AdaLlava` adds the vision tower. The HF model is held by composition (`self.base`); its decoder
layers, rotary tables, masks, norm and head are called as they are.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from adallava.core.budget import BudgetSpace
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
from adallava.core.planning import budget_units
from adallava.engine import hf_compat
from adallava.engine.cache_slots import CacheSlots
from adallava.engine.deadlines import DeadlineKeeper, DeadlineReport, budget_values, deadline_rows
from adallava.engine.folders import resolve_model
from adallava.engine.generate import (
    check_generate_kwargs,
    generate_output,
    produced_tokens,
    stop_token_ids,
    to_left_padding,
)
from adallava.engine.lean.runner import LeanEngine, lean_generate
from adallava.engine.lean.sampling import resolve_sampling
from adallava.engine.lean.speculative import check_speculative, resolve_speculative
from adallava.engine.lean.weights import unsupported_reason
from adallava.engine.outputs import AdaLlavaOutput
from adallava.engine.passes import Embedded, Pass
from adallava.engine.sliced import SliceCache
from adallava.engine.stack import call_layer, prepare_layer_inputs
from adallava.engine.switches import StackRun, kind_of, switch_kind
from adallava.modules.gates import UnitGates
from adallava.modules.latency import (
    IGNORE_INDEX,
    LatencyEncoder,
    insert_at,
    insert_position_ids,
    latency_positions,
)
from adallava.modules.scheduler_head import SchedulerHead

ADAPTIVE_CONFIG_FILE = "adaptive_config.json"
ADAPTIVE_WEIGHTS_FILE = "adaptive.safetensors"
SCHEDULER_TRAINED = "scheduler_trained"  # adaptive_config.json: whether the scheduler was trained


class AdaptiveDecoder(hf_compat.GenerativeModel):
    """The adaptive engine on a HF model `base` with `base.lm_head` and a decoder stack
    (`text_model`: embeddings, layers, rotary tables, norm). Subclasses say how the base is built,
    loaded and checked, and how inputs are embedded."""

    main_input_name = "input_ids"
    base_model_prefix = "base"

    def __init__(self, config, adaptive: AdaptiveConfig | None = None, base=None):
        super().__init__(config)
        self.base = base if base is not None else self._new_base(config)
        self.text_config = text_config = config.get_text_config()
        self.num_layers = text_config.num_hidden_layers
        self.adaptive = (adaptive or AdaptiveConfig()).resolve(self.num_layers)
        self.num_prefix = self.adaptive.num_prefix_layers
        self.shape = ModelShape.from_config(config)
        self.switches = switch_kind(self.adaptive.switches)(self.adaptive, text_config, self.shape)
        self.geometry = self.switches.geometry
        self.budgets = BudgetSpace(self.switches.total_units, self.switches.prefix_units)
        self.slices = SliceCache()  # sliced layers of head plans, built once per plan
        # How head plans run at inference: "sliced" (rows grouped by plan, each group on weights
        # sliced to its plan) or "masked" (every row runs full layers with off units zeroed; no
        # saving, but one batched matmul whatever the mix of plans). See benchmarks/bench_heads.py.
        self.head_execution = "sliced"
        self.latency_encoder = LatencyEncoder(text_config.hidden_size, self.adaptive.latency_frequencies)
        self.scheduler = SchedulerHead(text_config.hidden_size, self.switches.num_switches)
        self._init_adaptive_weights(text_config.initializer_range)
        # Fresh weights: budgets would be planned by noise. `adallava train` / `convert` set it (it is
        # saved as "scheduler_trained" in adaptive_config.json); answering refuses budgets while False.
        self.scheduler_trained = False
        self.post_init()

    def _init_adaptive_weights(self, std: float) -> None:
        for module in [*self.latency_encoder.modules(), *self.scheduler.modules()]:
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=std)
                torch.nn.init.zeros_(module.bias)

    # ---- what differs between base model kinds ----------------------------------------------------
    @classmethod
    def _new_base(cls, config):
        raise NotImplementedError

    @classmethod
    def _load_base(cls, directory, **kwargs):
        raise NotImplementedError

    @classmethod
    def _check_base(cls, base) -> None:
        raise NotImplementedError

    @property
    def text_model(self):
        """The HF decoder stack (embeddings, layers, rotary tables, final norm)."""
        raise NotImplementedError

    def embed(self, input_ids, pixel_values, inputs_embeds, attention_mask, labels, past_length,
              lean: bool = False) -> Embedded:  # fmt: skip
        """Token embeddings [B, T, D] of the inputs (a text model refuses pixel_values). lean: the
        lean engine's functional vision tower where the model's tower allows it."""
        if pixel_values is not None:
            raise ValueError(
                f"{type(self).__name__} is text-only and takes no pixel_values; use AdaLlava for Llava models"
            )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        hidden = self.base.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        return Embedded(hidden, attention_mask, labels, None)

    def selects_tokens(self, pixel_values, past_length: int) -> bool:
        """Whether this call selects visual tokens (PruMerge), which re-lays rows out."""
        return False

    def image_token_counts(self, input_ids, real: torch.Tensor, with_vision: bool) -> torch.Tensor:
        """Visual tokens each row feeds the LLM (for pricing the vision tower). long [B]."""
        return torch.zeros_like(real)

    # ---- construction, save, load --------------------------------------------------------------
    @classmethod
    def from_base(cls, base, adaptive: AdaptiveConfig | None = None):
        """Make a HF model adaptive. The base modules are shared, not copied; the scheduler and
        latency encoder are freshly initialised (on the base model's device)."""
        cls._check_base(base)
        model = cls(base.config, adaptive, base=base)
        model.generation_config = base.generation_config
        reference = next(base.parameters())
        model.latency_encoder.to(reference.device)
        model.scheduler.to(reference.device)
        return model.train(base.training)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """The HF model's folder (config.json, model.safetensors, generation_config.json) plus
        adaptive_config.json (the settings and "scheduler_trained") and adaptive.safetensors."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        kwargs.pop("safe_serialization", None)
        self.base.save_pretrained(directory, **kwargs)
        saved = {**self.adaptive.to_dict(), SCHEDULER_TRAINED: bool(self.scheduler_trained)}
        (directory / ADAPTIVE_CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")
        tensors = {f"latency_encoder.{k}": v for k, v in self.latency_encoder.state_dict().items()}
        tensors |= {f"scheduler.{k}": v for k, v in self.scheduler.state_dict().items()}
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(directory / ADAPTIVE_WEIGHTS_FILE),
            metadata={"format": "pt", "library": "adallava"},
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs):
        """Load a folder written by `save_pretrained`, or a bundled model by name (offline). Extra kwargs
        go to the HF model's `from_pretrained` (e.g. dtype, attn_implementation, device_map). A file
        without "scheduler_trained" (written before the key existed) loads as untrained: mark it true
        in adaptive_config.json if its scheduler was trained."""
        directory = resolve_model(path)
        config_file = directory / ADAPTIVE_CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{directory} has no {ADAPTIVE_CONFIG_FILE}: it is not an adallava checkpoint. To make a HF "
                f"model adaptive use {cls.__name__}.from_base(<the HF model>, AdaptiveConfig())"
            )
        saved = json.loads(config_file.read_text())
        trained = saved.pop(SCHEDULER_TRAINED, False)
        if not isinstance(trained, bool):
            raise ValueError(f"{config_file}: {SCHEDULER_TRAINED} must be true or false, got {trained!r}")
        model = cls.from_base(cls._load_base(directory, **kwargs), AdaptiveConfig.from_dict(saved))
        model.scheduler_trained = trained
        state = load_file(str(directory / ADAPTIVE_WEIGHTS_FILE))
        for prefix, module in (("latency_encoder.", model.latency_encoder), ("scheduler.", model.scheduler)):
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(part, strict=True)
        reference = next(model.base.parameters())
        model.latency_encoder.to(reference.device)
        model.scheduler.to(reference.device)
        return model.eval()

    # ---- the head-plan slice cache follows the weights (see modules.sliced.SliceCache) ------------
    # Sliced layers hold copies of weights, outside the module tree: drop them whenever the module
    # tree's weights may have been replaced, moved or converted. (In-place edits made any other way
    # are caught by the fingerprint each cache entry keeps.)
    def _apply(self, fn, *args, **kwargs):
        # .to / .cuda / .half ...: new dtype or device. Cleared here, not left to the fingerprints: a
        # round trip (.half().float()) can put the new weights at the old address (the CUDA caching
        # allocator reuses freed blocks) with the old version count, indistinguishable from before.
        result = super()._apply(fn, *args, **kwargs)
        self._clear_derived()
        return result

    def train(self, mode: bool = True):
        result = super().train(mode)  # sliced attention clones keep the flag they were built with
        self._clear_derived()
        return result

    def load_state_dict(self, state_dict, *args, **kwargs):
        result = super().load_state_dict(state_dict, *args, **kwargs)
        self._clear_derived()
        return result

    def _clear_derived(self) -> None:
        """Drop what was derived from the weights (sliced layers, the lean engine's copies)."""
        self.slices.clear()
        if "_lean_engine" in self.__dict__:
            self.lean_engine.clear()

    # ---- budgets ------------------------------------------------------------------------------
    @property
    def total_units(self) -> int:
        """Nu: budget units of the whole decoder stack (layers, or groups of `rank` head units)."""
        return self.switches.total_units

    @property
    def prefix_units(self) -> int:
        """Pu: budget units of the prefix layers."""
        return self.switches.prefix_units

    @property
    def b_min(self) -> float:
        """The smallest fraction a budget may be: the prefix layers' share of the decoder stack."""
        return self.budgets.b_min

    def units_for(self, fractions: torch.Tensor) -> torch.Tensor:
        """Budget units each row's fraction buys: n = floor(Nu * b) - Pu (DESIGN.md); under
        `selection="official"` with the authors' arithmetic in the model's dtype. long [B]."""
        return budget_units(self.adaptive, self.budgets, fractions, self.dtype)

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
        if budget is not None and plan is not None:
            raise ValueError("give either a budget (the scheduler picks the plan) or a plan, not both")
        cache = hf_compat.resolve_cache(past_key_values, cache)
        past_length = cache.get_seq_length() if cache is not None else 0
        # Inside `generate`, decoding steps are priced once at the end rather than at every token.
        priced = adallava_sink is None or past_length == 0
        if budget is None and plan is None and not self.selects_tokens(pixel_values, past_length):
            return self._base_forward(
                input_ids, pixel_values, attention_mask, position_ids, cache, inputs_embeds, labels,
                use_cache, logits_to_keep, past_length, priced, adallava_sink, **kwargs,
            )  # fmt: skip
        run = self._embed_inputs(input_ids, pixel_values, inputs_embeds, attention_mask, position_ids,
                                 labels, cache, past_length, use_cache)  # fmt: skip
        if budget is not None:
            self._insert_latency_token(run, budget)
        else:
            plan = ExecutionPlan.full(run.batch, self.num_layers) if plan is None else plan  # selection only
            run.plan = self._check_plan(plan, run.batch, run.hidden.device)
        self._run_stack(run, sample_plan, generator)
        logits, loss = self._head_and_loss(run, logits_to_keep, **kwargs)
        cost = full_cost = None
        if priced:
            cost, full_cost = self._price_pass(run, logits_to_keep, adallava_sink)
        return self._output(run, logits, loss, cost, full_cost)

    # ---- the stages ------------------------------------------------------------------------------
    def _embed_inputs(self, input_ids, pixel_values, inputs_embeds, attention_mask, position_ids, labels,
                      cache, past_length, use_cache, lean: bool = False) -> Pass:  # fmt: skip
        """Embeddings (images scattered or selected), the attention mask and positions as HF builds
        them, and the KV cache this call writes to."""
        embedded = self.embed(
            input_ids, pixel_values, inputs_embeds, attention_mask, labels, past_length, lean
        )
        hidden, mask = embedded.hidden, embedded.attention_mask
        batch, length = hidden.shape[:2]
        if mask is None:
            mask = torch.ones(batch, past_length + length, dtype=torch.long, device=hidden.device)
        image_tokens = embedded.image_tokens
        if image_tokens is None:
            image_tokens = self.image_token_counts(input_ids, mask.sum(-1).cpu(), pixel_values is not None)
        if embedded.relaid:  # the new layout's positions
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T']
        elif position_ids is None:  # as HF: positions continue the cache
            position_ids = torch.arange(past_length, past_length + length, device=hidden.device)[None]
        if use_cache is None:
            use_cache = self.text_config.use_cache and not self.training
        if use_cache and cache is None:
            cache = hf_compat.new_cache(self.text_config)
        return Pass(hidden, mask, position_ids.expand(batch, -1), embedded.labels, image_tokens,
                    cache if use_cache else None, past_length, pixel_values is not None,
                    embedded.relaid)  # fmt: skip

    def _insert_latency_token(self, run: Pass, budget) -> None:
        """Budgets -> fractions and units; each row's latency token goes after its prompt."""
        if run.past_length > 0:
            raise ValueError("a budget is turned into a plan at prefill; for later steps pass plan=out.plan")
        # The request's tokens include its latency token; absolute caps are converted against that.
        full_llm = full_llm_flops(self.shape, run.attention_mask.sum(-1).cpu() + 1)
        run.fractions = self.budgets.fractions(budget, run.batch, full_llm)
        run.units = self.units_for(run.fractions).to(run.hidden.device)  # [B]
        run.latency_positions = positions = latency_positions(run.attention_mask, run.labels)  # [B]
        token = self.latency_encoder(run.units, self.total_units, self.prefix_units)  # [B, D]
        run.hidden = insert_at(run.hidden, positions, token.to(run.hidden.dtype))  # [B, T+1, D]
        run.attention_mask = insert_at(run.attention_mask, positions, 1)
        run.position_ids = insert_position_ids(run.position_ids, positions)
        if run.labels is not None:
            run.labels = insert_at(run.labels, positions, IGNORE_INDEX)

    def _run_stack(self, run: Pass, sample: bool, generator) -> None:
        """The decoder layers: with a budget, the prefix for every row, then the scheduler's plan for
        the upper layers; with a plan, every layer under it."""
        text_model = self.text_model
        inputs = prepare_layer_inputs(text_model, run.hidden, run.attention_mask, run.position_ids,
                                      run.cache, run.cache is not None)  # fmt: skip
        slots = CacheSlots(run.cache, self.num_layers)
        layers = text_model.layers[: self.num_layers]
        start = 0
        if run.plan is None:  # budget mode: the prefix runs for every row, then the scheduler plans
            for index in range(self.num_prefix):
                run.hidden = call_layer(layers[index], run.hidden, index, inputs)
            self._plan(run, sample, generator)
            start = self.num_prefix
        kind = kind_of(run.plan)
        stack = StackRun(self.num_prefix, slots, self.slices, self._geometry_for(run.plan),
                         masked=self.head_execution == "masked")  # fmt: skip
        with ExitStack() as hooks:
            if kind.needs_unit_gates(run.plan, run.gates, stack):
                stack.unit_gates = hooks.enter_context(UnitGates(text_model.layers, stack.geometry))
            for index in range(start, self.num_layers):
                run.hidden = kind.run_layer(
                    layers[index], index, run.hidden, inputs, run.plan, run.gates, stack
                )

    def _plan(self, run: Pass, sample: bool, generator) -> None:
        """The scheduler reads each row's latency token at the input of layer P and picks its plan
        (training: straight-through samples, kept as gates)."""
        rows = torch.arange(run.batch, device=run.hidden.device)
        run.scheduler_logits = logits = self.scheduler(run.hidden[rows, run.latency_positions])  # [B, S]
        tokens = run.attention_mask.sum(-1).cpu()  # [B] real tokens, latency token included
        training = self.training and torch.is_grad_enabled()
        planner = self.switches.planner
        if self.adaptive.scheduler == "deterministic":
            run.plan, run.gates, run.latency_loss = planner.deterministic(
                logits, run.fractions, tokens, training=training
            )
        else:
            run.plan, run.gates = planner.choose(
                logits,
                run.units,
                run.fractions,
                tokens,
                training=training,
                sample=sample,
                generator=generator,
            )

    def _head_and_loss(self, run: Pass, logits_to_keep, **kwargs):
        """Final norm, the LM head on the kept positions, and the loss (plus the deterministic
        scheduler's latency loss while it trains)."""
        hidden = self.text_model.norm(run.hidden)
        keep = logits_to_keep if isinstance(logits_to_keep, int) and logits_to_keep > 0 else None
        logits = self.base.lm_head(hidden if keep is None else hidden[:, -keep:])
        loss = None
        if run.labels is not None:
            loss = hf_compat.causal_lm_loss(
                self.base, logits, run.labels, self.text_config.vocab_size, **kwargs
            )
            if run.latency_loss is not None and run.gates is not None:  # deterministic scheduler, training
                loss = loss + self.adaptive.latency_loss_weight * run.latency_loss
        return logits, loss

    def _price_pass(self, run: Pass, logits_to_keep, sink) -> tuple[BatchCost, BatchCost]:
        """Per-row FLOPs of what ran and of the full model on the same tokens."""
        images = torch.ones_like(run.image_tokens) if run.relaid else None  # one image per row, merged
        length = run.hidden.shape[1]
        args = (
            run.image_tokens,
            run.attention_mask,
            length,
            run.past_length,
            logits_to_keep,
            run.with_vision,
        )
        cost = self._price(*args, plan=run.plan, num_images=images)
        full_cost = self._price(*args, plan=None, num_images=images)
        self._record(sink, cost=cost, full_cost=full_cost, plan=run.plan, budget=run.fractions,
                     prefill_tokens=run.attention_mask.sum(-1).cpu())  # fmt: skip
        return cost, full_cost

    def _output(self, run: Pass, logits, loss, cost, full_cost) -> AdaLlavaOutput:
        relaid = run.latency_positions is not None or run.relaid
        return AdaLlavaOutput(
            loss=loss,
            logits=logits,
            **hf_compat.cache_kwargs(run.cache),
            plan=run.plan,
            budget=run.fractions,
            latency_positions=run.latency_positions,
            scheduler_logits=run.scheduler_logits,
            cost=cost,
            full_cost=full_cost,
            attention_mask=run.attention_mask if relaid else None,
            position_ids=run.position_ids if relaid else None,
        )

    def _base_forward(
        self, input_ids, pixel_values, attention_mask, position_ids, cache, inputs_embeds, labels,
        use_cache, logits_to_keep, past_length, priced, sink, **kwargs,
    ) -> AdaLlavaOutput:  # fmt: skip
        """The unmodified HF model (no latency token, no scheduler), plus the cost of what it ran."""
        if pixel_values is not None:  # text-only bases take no pixel_values argument at all
            kwargs["pixel_values"] = pixel_values
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                        logits_to_keep=logits_to_keep, **hf_compat.cache_kwargs(cache), **kwargs)  # fmt: skip
        cost = None
        if priced:
            batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
            if attention_mask is None:
                attention_mask = torch.ones(batch, past_length + length, dtype=torch.long)
            with_vision = pixel_values is not None
            image_tokens = self.image_token_counts(input_ids, attention_mask.sum(-1).cpu(), with_vision)
            cost = self._price(image_tokens, attention_mask, length, past_length, logits_to_keep, with_vision)
            self._record(sink, cost=cost, full_cost=cost, plan=None, budget=None,
                         prefill_tokens=attention_mask.sum(-1).cpu())  # fmt: skip
        return AdaLlavaOutput(loss=out.loss, logits=out.logits, cost=cost, full_cost=cost,
                              **hf_compat.cache_kwargs(hf_compat.output_cache(out)))  # fmt: skip

    def _price(
        self,
        image_tokens,
        attention_mask,
        length: int,
        past_length: int,
        logits_to_keep,
        with_vision: bool,
        plan: ExecutionPlan | None = None,
        num_images=None,
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

    def _geometry_for(self, plan: ExecutionPlan):
        """Unit geometry of a head plan (explicit plans may use another number of MLP groups)."""
        if plan.heads is None or plan.mlp.shape[-1] == self.geometry.mlp_groups:
            return self.geometry
        return geometry_of(self.text_config, plan.mlp.shape[-1])

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
    @property
    def lean_engine(self) -> LeanEngine:
        """The lean engine's per-model state (weights read once, rotary tables)."""
        engine = self.__dict__.get("_lean_engine")
        if engine is None:
            engine = self.__dict__["_lean_engine"] = LeanEngine()
        return engine

    @property
    def deadlines(self) -> DeadlineKeeper:
        """The latency profile and online controller that turn deadlines into plans (created on first
        use; its profile is loaded from the user cache or measured then)."""
        keeper = self.__dict__.get("_deadlines")
        if keeper is None:
            keeper = self.__dict__["_deadlines"] = DeadlineKeeper(self)
        return keeper

    def _choose_engine(self, engine: str | None, input_ids, kwargs: dict) -> str:
        """The engine a generate call runs: "lean" by default where it can run this model on this call
        (see `lean.weights.unsupported_reason`), else "hf"; an explicit "lean" it cannot run is an
        error that says why."""
        if engine not in (None, "lean", "hf"):
            raise ValueError(f"engine must be 'lean' or 'hf', got {engine!r}")
        if engine == "hf":
            return engine
        new = kwargs.get("max_new_tokens") or self.generation_config.max_new_tokens or 0
        length = None if input_ids is None else input_ids.shape[1] + new + 1  # + the latency token
        reason = unsupported_reason(self.text_model, length, self.lean_engine.structure_memo)
        if reason is None and input_ids is None:
            reason = "it needs input_ids (not inputs_embeds)"
        if reason is None and self.training:
            reason = "the model is in training mode (call model.eval())"
        if reason is None:
            return "lean"
        if engine == "lean":
            raise ValueError(f"the lean engine cannot run this call: {reason}; pass engine='hf'")
        return "hf"

    def generate(self, input_ids=None, attention_mask=None, budget=None, plan: ExecutionPlan | None = None,
                 engine: str | None = None, deadline_start: float | None = None,
                 deadline_best_effort: bool = False, **kwargs):  # fmt: skip
        """Generation with a per-row budget (or plan). The plan is made once at prefill and reused
        for every new token. Right-padded batches are moved to left padding first (rows are rolled),
        so results do not depend on the padding side; returned sequences start with the prompt as
        given. With `return_dict_in_generate=True` the output (`AdaGenerateOutput`) also carries each
        row's plan, budget, prefill and decode FLOPs, and the prefill and decode wall-clock ms.

        engine: "lean" (the default where the model's layers allow it: `engine.lean.runner`, greedy and
        sampling) or "hf" (Hugging Face `generate`, for what the lean loop does not support, e.g.
        beam search or repetition penalties; the lean engine names such options and points here).
        `compile=True` (lean): decoding steps run as compiled static-shape graphs
        (`engine.lean.compiled`; the first step of a new plan and shape compiles).
        `speculative=True` or a `SpeculativeConfig` (lean, greedy, layer plans): a cheaper plan of the
        same model drafts tokens that the request's plan verifies in one forward; the tokens are those
        of plain decoding (`engine.lean.speculative`, docs/speculative.md), `out.speculative` reports
        what was drafted, accepted and computed.

        Deadlines: a budget may be a deadline ("300ms", "0.3s", `Deadline(ms=300)`; per row, mixed with
        fractions): the answer is planned to be complete within it, counted from `deadline_start` (a
        `time.perf_counter()` value, e.g. the request's arrival; default: this call). See
        `engine.deadlines`. An infeasible deadline raises `DeadlineInfeasible` unless
        `deadline_best_effort` (then the smallest plan runs). The output's `deadline` reports
        predicted and measured ms, met, and the slowdown used."""
        check_generate_kwargs(budget, kwargs)
        speculative = resolve_speculative(kwargs.pop("speculative", None))
        engine = self._choose_engine(engine, input_ids, kwargs)
        if speculative is not None and engine == "hf":
            raise ValueError("speculative decoding runs on the lean engine; this call runs on engine='hf'")
        if engine == "hf" and kwargs.pop("compile", False):
            raise ValueError("compile=True is an option of the lean engine; this call runs on engine='hf'")
        deadlines = deadline_rows(budget, 1 if input_ids is None else input_ids.shape[0])
        if deadlines is not None:
            if speculative is not None:
                raise ValueError("speculative decoding cannot be combined with deadline budgets; drop one")
            if engine != "lean":
                raise ValueError("deadline budgets run on the lean engine; this call runs on engine='hf'")
            return self._generate_for_deadline(input_ids, attention_mask, budget, deadlines, deadline_start,
                                               deadline_best_effort, kwargs)  # fmt: skip
        original_ids = input_ids
        if input_ids is not None and attention_mask is not None:
            input_ids, attention_mask = to_left_padding(input_ids, attention_mask)
        sink: dict = {}
        stops = stop_token_ids(kwargs, self.eos_token_ids)
        if engine == "hf":
            started = time.perf_counter()
            out = super().generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                budget=budget,
                plan=plan,
                adallava_sink=sink,
                **kwargs,
            )
            end = time.perf_counter()
            first_token = sink.get("first_token", end)
            sink["prefill_ms"], sink["decode_ms"] = (first_token - started) * 1e3, (end - first_token) * 1e3
            return generate_output(self, out, original_ids, input_ids, plan, sink, stops)
        compile_steps = bool(kwargs.pop("compile", False))
        monitor = kwargs.pop("deadline_monitor", None)  # internal: set by _generate_for_deadline
        sampling, rest = resolve_sampling(self, input_ids.shape[1], kwargs, self.lean_engine.sampling_memo)
        if speculative is not None:
            check_speculative(self, speculative, budget, plan, sampling, compile_steps)
        with torch.no_grad():
            result = lean_generate(
                self, input_ids, attention_mask, rest.get("pixel_values"), budget, plan, sampling, sink,
                rest.get("streamer"), rest.get("stopping_criteria"), rest.get("generator"), compile_steps,
                monitor, speculative,
            )  # fmt: skip
        out = hf_compat.GenerateOutput(sequences=result.sequences, scores=result.scores, logits=result.logits)
        sink["prefill_ms"], sink["decode_ms"] = result.prefill_ms, result.decode_ms
        if not sampling.return_dict:
            if speculative is not None and speculative.observer is not None:
                speculative.observer(sink["speculative"])
            return generate_output(self, result.sequences, original_ids, input_ids, plan, sink, stops)
        out = generate_output(self, out, original_ids, input_ids, plan, sink, stops)
        if speculative is not None:
            out.speculative = sink["speculative"].with_decode_cost(out.decode_cost)
            if speculative.observer is not None:
                speculative.observer(out.speculative)
        return out

    def _generate_for_deadline(
        self, input_ids, attention_mask, budget, deadlines, start, best_effort, kwargs
    ):
        """Plan the deadline rows with the controller, generate, then record what it took."""
        called = time.perf_counter()
        start = called if start is None else start
        waited_ms = max(0.0, (called - start) * 1e3)
        batch, prompt_tokens = input_ids.shape[0], input_ids.shape[1] + 1  # + the latency token
        pixels = kwargs.get("pixel_values")
        images = 0 if pixels is None else pixels.shape[0]
        max_new = kwargs.get("max_new_tokens") or self.generation_config.max_new_tokens or 1
        keeper = self.deadlines
        plan, fraction, tightest = keeper.plan(deadlines, prompt_tokens, max_new, batch, images, waited_ms,
                                               best_effort)  # fmt: skip
        values = budget_values(budget, batch)
        fractions = [fraction if d is not None else v for d, v in zip(deadlines, values, strict=True)]
        threads = torch.get_num_threads()
        if plan.threads is not None and plan.threads != threads:
            torch.set_num_threads(plan.threads)
        try:
            ran = time.perf_counter()
            monitor = keeper.monitor(plan, prompt_tokens, max_new, batch)
            options = {**kwargs, "return_dict_in_generate": True, "deadline_monitor": monitor}
            out = self.generate(input_ids, attention_mask, budget=fractions, engine="lean", **options)
            end = time.perf_counter()
        finally:
            if plan.threads is not None and plan.threads != threads:
                torch.set_num_threads(threads)
        new = out.sequences[:, input_ids.shape[1] :]
        tokens = int(self.produced_tokens(new.cpu()).max()) if new.numel() else 1
        keeper.record(plan, (end - ran) * 1e3, prompt_tokens, tokens, batch, images, tuple(monitor.dropped))
        measured = (end - start) * 1e3
        out.deadline = DeadlineReport(
            deadline_ms=tightest, predicted_ms=plan.predicted_ms + waited_ms, measured_ms=measured,
            waited_ms=waited_ms, met=measured <= tightest, slowdown=plan.slowdown, upper_units=plan.units,
            fraction=fraction, threads=plan.threads,
            best_effort=best_effort and plan.predicted_ms > plan.budget_ms, dropped=tuple(monitor.dropped),
        )  # fmt: skip
        if kwargs.get("return_dict_in_generate"):
            return out
        return out.sequences

    def continue_generation(self, outputs, model_kwargs: dict) -> None:
        """After the prefill: freeze its plan for the remaining steps, and continue from the layout
        it ran (latency token inserted, visual tokens selected) rather than the prompt as given."""
        sink = model_kwargs.get("adallava_sink")
        if sink is not None and "first_token" not in sink:
            sink["first_token"] = time.perf_counter()  # HF path: the prefill's forward has just run
        if getattr(outputs, "attention_mask", None) is not None:
            model_kwargs["attention_mask"] = outputs.attention_mask
            model_kwargs["position_ids"] = outputs.position_ids
        if getattr(outputs, "plan", None) is not None and model_kwargs.get("plan") is None:
            model_kwargs["budget"] = None
            model_kwargs["plan"] = outputs.plan

    def decode_cost(self, prefill_tokens: torch.Tensor, new_tokens: torch.Tensor, plan: ExecutionPlan | None,
                    limits: torch.Tensor | None = None, eos_token_ids: list[int] | None = None,
                    plan_changes: list[tuple[int, ExecutionPlan]] | None = None) -> BatchCost:  # fmt: skip
        """FLOPs of each row's decoding steps. The prefill produced the first new token; each later
        token is one step, fed the previous token, up to the row's first end-of-sequence token (and
        at most `limits[b]` new tokens when given). prefill_tokens, limits: long [B]; new_tokens [B, G].
        plan_changes [(k, later plan), ...] (k increasing): a deadline request that fell behind dropped
        upper layers after its k-th token, so the steps making tokens k+1, ... ran under `later` (and
        the steps before under the plan in force then, `plan` first)."""
        eos = self.eos_token_ids if eos_token_ids is None else eos_token_ids
        produced = produced_tokens(new_tokens.cpu(), eos)  # [B]
        if limits is not None:
            produced = torch.minimum(produced, limits.cpu())
        steps = (produced - 1).clamp(min=0)  # [B]; step s makes token s + 1
        segments = [(1, plan), *(plan_changes or [])]
        cost = None
        for (first, segment_plan), (following, _) in zip(
            segments, [*segments[1:], (None, None)], strict=True
        ):
            done_before = torch.full_like(steps, first - 1).clamp(max=steps)  # steps before this segment
            last = steps if following is None else steps.clamp(max=following - 1)
            part = price_decode(self.shape, prefill_tokens + done_before, last - done_before, segment_plan)
            cost = part if cost is None else cost + part
        return cost

    @property
    def eos_token_ids(self) -> list[int]:
        """The generation config's end-of-sequence ids (none, one or several)."""
        eos = self.generation_config.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def produced_tokens(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """long [B]: new tokens [B, G] up to and including each row's first end-of-sequence token."""
        return produced_tokens(new_tokens, self.eos_token_ids)
