"""TrainArgs: every setting of `adallava train`, typed, validated, documented once.

The docstring under each field is its CLI help; `adallava.cli.flags` turns the fields into flags
and YAML keys. Values come from the defaults, then a YAML file (`--config`), then command-line flags
(`--learning-rate 1e-5`), each overriding the one before. How the model is made adaptive is one nested
AdaptiveConfig, `adaptive:` in YAML and `--adaptive.KEY` flags (`--adaptive.switches head`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from adallava.core import settings
from adallava.core.config import AdaptiveConfig
from adallava.core.settings import check, flag

# Keys that were flat TrainArgs keys before AdaptiveConfig was nested: old key -> new dotted key.
# An old YAML file or flag stops with these names (core.settings: `moved`).
MOVED = {
    "switches": "adaptive.switches",
    "num_prefix_layers": "adaptive.num_prefix_layers",
    "rank": "adaptive.rank",
    "tau": "adaptive.tau",
    "scheduler_kind": "adaptive.scheduler",
    "latency_loss_weight": "adaptive.latency_loss_weight",
}


@dataclass(frozen=True)
class TrainArgs:
    """Settings of one training run (stage `base` or `adaptive`)."""

    stage: Literal["base", "adaptive"]
    """'base': train a HF Llava, all parameters, e.g. from a random initialisation. 'adaptive': make a
    trained Llava adaptive (AdaLLaVA) and fine-tune it with a random budget per sample."""
    model: str
    """Folder of the starting model: a HF Llava (base stage: e.g. a random init; adaptive stage: the base
    checkpoint), or an AdaLlava folder to continue adaptive training."""
    data: str
    """LLaVA conversation JSON (llava_v1_5_mix665k.json format) or the same records as JSONL."""
    output_dir: str
    """Where the final model, checkpoints, log.jsonl and train_args.yaml go."""
    image_folder: str | None = None
    """Folder that the samples' relative image paths resolve against (default: the data file's folder)."""
    processor: str | None = None
    """Folder to load the processor (tokenizer, image processor, chat template) from (default: model)."""

    # ---- the adaptive stage ----
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    """Adaptive stage: how the model is made adaptive (switches, prefix, rank, scheduler, ...), one
    AdaptiveConfig; set its keys as `adaptive: {switches: head, rank: 8}` in YAML or
    `--adaptive.switches head --adaptive.rank 8`. Continuing from an AdaLlava folder, the folder's
    values stand: keys that shape the model must match them, tau and latency_loss_weight may change."""
    scheduler_learning_rate: float | None = 1e-4
    """Adaptive stage: peak learning rate of the scheduler and latency encoder (paper: 1e-4); none: the
    same as learning_rate, one rate for every parameter (the authors' code: 1e-5 for everything)."""
    lora: bool = False
    """Adaptive stage: train LoRA adapters on the LLM's q/k/v/o/gate/up/down projections instead of the
    full LLM (needs `pip install peft`); scheduler, latency encoder and projector train fully."""
    lora_r: int = 128
    """LoRA rank."""
    lora_alpha: float = 256.0
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch."""
    train_vision_tower: bool | None = None
    """Train the vision tower too (default: yes in the base stage, no (frozen) in the adaptive stage)."""

    # ---- optimisation ----
    learning_rate: float = 2e-5
    """Peak learning rate of the model (base stage: all parameters; adaptive: the LLM and projector)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (0 disables)."""
    lr_schedule: Literal["constant_with_warmup", "cosine", "linear"] | None = None
    """'constant_with_warmup', 'cosine' or 'linear' decay after warm-up (default: constant_with_warmup for
    the base stage, cosine for the adaptive stage, as LLaVA's fine-tuning). A decay that ends before the
    model has learned stalls it: prefer a flat schedule for short or from-scratch runs."""
    warmup_steps: int = 0
    """Linear warm-up length in optimizer steps (give this or warmup_ratio)."""
    warmup_ratio: float = 0.0
    """Linear warm-up as a fraction of all optimizer steps (LLaVA: 0.03)."""
    min_lr_ratio: float = 0.0
    """Cosine / linear: the learning rate at the end, as a fraction of the peak."""
    batch_size: int = 16
    """Samples per micro-batch per process."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step. Global batch = batch_size x this x number of processes."""
    epochs: float = 1.0
    """Passes over the data (may be fractional); ignored when max_steps is given."""
    max_steps: int | None = None
    """Optimizer steps to run (overrides epochs)."""
    max_length: int = 2048
    """Token sequences are cut at this length (an error if that cuts the image or every answer)."""
    seed: int = 0
    """Seeds the data order, the initialisation of new weights, budgets and plan sampling."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """'no', 'bf16' or 'fp16' autocast (GPU only; on CPU training runs in fp32 and says so)."""
    gradient_checkpointing: bool = False
    """Recompute decoder-layer activations in the backward pass (less memory, more compute)."""

    # ---- data ----
    prompt_format: Literal["auto", "chat_template", "llava_v1"] = "auto"
    """'auto' (the processor's chat template if it has one, else llava_v1), 'chat_template' or 'llava_v1'
    (LLaVA-1.5: `USER: <image>\\n... ASSISTANT: answer</s>`)."""
    system_prompt: str = ""
    """Text before the first turn (LLaVA-1.5 and the AdaLLaVA authors train with LLaVA's `--version v1`,
    i.e. conv_vicuna_v1: 'A chat between a curious user and an artificial intelligence assistant. ...')."""
    pad_to_square: bool = False
    """Pad images to a square with the mean colour before processing (LLaVA-1.5: image_aspect_ratio pad)."""
    skip_bad: bool = False
    """Count, log and leave out malformed samples instead of stopping with an error."""
    cache_tokens: bool = False
    """Keep each sample's token ids and labels in memory after its first epoch, so later epochs only
    process images (worth it for small data sets of short samples; memory grows with the data)."""
    cache_images: bool = False
    """Keep each sample's processed pixel values in memory too, so later epochs do no image work (for
    small images: 27 KB a sample at 48x48, 1.35 MB at LLaVA-1.5's 336x336)."""
    num_workers: int = 0
    """DataLoader worker processes per training process (kept alive across epochs)."""

    # ---- logging and checkpoints ----
    log_every: int = 10
    """Write a line to log.jsonl every this many optimizer steps (and at the last step)."""
    save_every: int = 500
    """Save a checkpoint every this many optimizer steps (0: only the final model)."""
    save_total_limit: int | None = None
    """Keep only the newest this many checkpoints (default: all)."""
    resume: str | None = None
    """Continue exactly from a checkpoint folder, or 'latest' for the newest one in output_dir."""
    progress_bar: bool = True
    """Show a progress bar with the loss and samples/s."""

    def __post_init__(self) -> None:
        if isinstance(self.adaptive, Mapping):  # TrainArgs(adaptive={"switches": "head"})
            object.__setattr__(
                self, "adaptive", settings.build(AdaptiveConfig, self.adaptive, prefix="adaptive.")
            )
        if not isinstance(self.adaptive, AdaptiveConfig):
            raise ValueError(f"--adaptive.* must be an AdaptiveConfig or a mapping, got {self.adaptive!r}")
        settings.check_choices(self)
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{flag(name)} is required")
        check(self, "learning_rate", self.learning_rate > 0, "must be > 0")
        if self.scheduler_learning_rate is None:  # one rate for every parameter
            object.__setattr__(self, "scheduler_learning_rate", self.learning_rate)
        check(self, "scheduler_learning_rate", self.scheduler_learning_rate > 0, "must be > 0 (or none)")
        check(self, "weight_decay", self.weight_decay >= 0, "must be >= 0")
        check(self, "max_grad_norm", self.max_grad_norm >= 0, "must be >= 0 (0 disables clipping)")
        check(self, "warmup_steps", self.warmup_steps >= 0, "must be >= 0")
        check(self, "warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)")
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("give either --warmup-steps or --warmup-ratio, not both")
        check(self, "min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "must be in [0, 1]")
        check(self, "batch_size", self.batch_size >= 1, "must be >= 1")
        check(self, "gradient_accumulation_steps", self.gradient_accumulation_steps >= 1, "must be >= 1")
        check(self, "epochs", math.isfinite(self.epochs) and self.epochs > 0, "must be > 0")
        check(self, "max_steps", self.max_steps is None or self.max_steps >= 1, "must be >= 1")
        check(self, "max_length", self.max_length >= 2, "must be >= 2")
        check(self, "num_workers", self.num_workers >= 0, "must be >= 0")
        check(self, "log_every", self.log_every >= 1, "must be >= 1")
        check(self, "save_every", self.save_every >= 0, "must be >= 0 (0: only the final model)")
        check(
            self,
            "save_total_limit",
            self.save_total_limit is None or self.save_total_limit >= 1,
            "must be >= 1",
        )
        check(self, "lora_r", self.lora_r >= 1, "must be >= 1")
        check(self, "lora_alpha", self.lora_alpha > 0, "must be > 0")
        check(self, "lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)")
        if self.stage == "base" and self.lora:
            raise ValueError("--lora applies to the adaptive stage; the base stage trains all parameters")
        # Stage-dependent defaults, resolved once here so that nothing downstream guesses.
        if self.train_vision_tower is None:
            object.__setattr__(self, "train_vision_tower", self.stage == "base")
        if self.lr_schedule is None:
            schedule = "constant_with_warmup" if self.stage == "base" else "cosine"
            object.__setattr__(self, "lr_schedule", schedule)

    # ---- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "arguments") -> TrainArgs:
        """Build from a mapping of keys (dashes allowed; `adaptive` a nested mapping) to values; strings
        are converted to the key's type (YAML reads `1e-5` as a string). Unknown keys are an error naming
        the closest key; old flat adaptive keys (`switches`) one naming their new key."""
        return settings.build(cls, values, source, moved=MOVED)

    @classmethod
    def load(cls, config: str | Path | None = None, **overrides: Any) -> TrainArgs:
        """Defaults < the YAML file `config` < `overrides` (e.g. `adaptive={"rank": 2}`, or flags)."""
        return settings.load(cls, config, overrides, moved=MOVED)

    def to_dict(self) -> dict[str, Any]:
        return settings.to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
