"""TrainArgs: every setting of `adallava train`, typed, validated, documented once.

The docstring under each field is its CLI help. Values come from the defaults, then a YAML file
(`--config`), then command-line flags (`--learning-rate 1e-5`), each overriding the one before.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHOICES = {
    "stage": ("base", "adaptive"),
    "switches": ("layer", "head"),
    "scheduler_kind": ("probabilistic", "deterministic"),
    "lr_schedule": ("constant_with_warmup", "cosine", "linear"),
    "mixed_precision": ("no", "bf16", "fp16"),
    "prompt_format": ("auto", "chat_template", "llava_v1"),
}


@dataclass(frozen=True)
class TrainArgs:
    """Settings of one training run (stage `base` or `adaptive`)."""

    stage: str
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
    switches: str = "layer"
    """Adaptive stage: 'layer' (AdaLLaVA-L) or 'head' (AdaLLaVA-H)."""
    num_prefix_layers: int | None = None
    """Adaptive stage: layers that always run, P (default: N // 2)."""
    rank: int = 8
    """Adaptive stage, head switches: attention heads (and MLP groups) per budget unit; must divide the
    number of heads (official checkpoints: 8)."""
    tau: float = 5.0
    """Adaptive stage: Gumbel-softmax temperature of plan sampling."""
    scheduler_kind: str = "probabilistic"
    """Adaptive stage: 'probabilistic' (the paper's method: plans sampled within the budget) or
    'deterministic' (the Table 2 ablation: thresholded plans, NLL + latency_loss_weight * (cost - budget)^2;
    it may violate budgets)."""
    latency_loss_weight: float = 1.0
    """Adaptive stage, deterministic scheduler: lambda of the latency loss."""
    scheduler_learning_rate: float = 1e-4
    """Adaptive stage: peak learning rate of the scheduler and latency encoder (paper: 1e-4)."""
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
    lr_schedule: str | None = None
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
    mixed_precision: str = "no"
    """'no', 'bf16' or 'fp16' autocast (GPU only; on CPU training runs in fp32 and says so)."""
    gradient_checkpointing: bool = False
    """Recompute decoder-layer activations in the backward pass (less memory, more compute)."""

    # ---- data ----
    prompt_format: str = "auto"
    """'auto' (the processor's chat template if it has one, else llava_v1), 'chat_template' or 'llava_v1'
    (LLaVA-1.5: `USER: <image>\\n... ASSISTANT: answer</s>`)."""
    system_prompt: str = ""
    """Text before the first turn (LLaVA-1.5's v1 conversations start with 'A chat between a curious human
    and an artificial intelligence assistant. ...')."""
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
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"{_flag(name)} must be one of {', '.join(allowed)}; got {value!r}")
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{_flag(name)} is required")
        _check(self, "learning_rate", self.learning_rate > 0, "must be > 0")
        _check(self, "scheduler_learning_rate", self.scheduler_learning_rate > 0, "must be > 0")
        _check(self, "weight_decay", self.weight_decay >= 0, "must be >= 0")
        _check(self, "max_grad_norm", self.max_grad_norm >= 0, "must be >= 0 (0 disables clipping)")
        _check(self, "tau", self.tau > 0, "must be > 0")
        _check(self, "rank", self.rank >= 1, "must be >= 1")
        _check(self, "latency_loss_weight", self.latency_loss_weight >= 0, "must be >= 0")
        _check(self, "warmup_steps", self.warmup_steps >= 0, "must be >= 0")
        _check(self, "warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)")
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("give either --warmup-steps or --warmup-ratio, not both")
        _check(self, "min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "must be in [0, 1]")
        _check(self, "batch_size", self.batch_size >= 1, "must be >= 1")
        _check(self, "gradient_accumulation_steps", self.gradient_accumulation_steps >= 1, "must be >= 1")
        _check(self, "epochs", math.isfinite(self.epochs) and self.epochs > 0, "must be > 0")
        _check(self, "max_steps", self.max_steps is None or self.max_steps >= 1, "must be >= 1")
        _check(self, "max_length", self.max_length >= 2, "must be >= 2")
        _check(self, "num_workers", self.num_workers >= 0, "must be >= 0")
        _check(self, "log_every", self.log_every >= 1, "must be >= 1")
        _check(self, "save_every", self.save_every >= 0, "must be >= 0 (0: only the final model)")
        _check(
            self,
            "save_total_limit",
            self.save_total_limit is None or self.save_total_limit >= 1,
            "must be >= 1",
        )
        _check(self, "lora_r", self.lora_r >= 1, "must be >= 1")
        _check(self, "lora_alpha", self.lora_alpha > 0, "must be > 0")
        _check(self, "lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)")
        _check(
            self,
            "num_prefix_layers",
            self.num_prefix_layers is None or self.num_prefix_layers >= 1,
            "must be >= 1 (layer 0 always runs)",
        )
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
    def from_dict(cls, values: dict[str, Any], source: str = "arguments") -> TrainArgs:
        """Build from a mapping of field names (dashes allowed) to values; strings are converted to the
        field's type (YAML reads `1e-5` as a string). Unknown keys are an error naming the closest key."""
        names = [f.name for f in dataclasses.fields(cls)]
        hints = typing.get_type_hints(cls)
        converted = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{source}: unknown key {key!r}{hint} (known keys: {', '.join(names)})")
            converted[name] = convert(value, hints[name], name)
        missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in converted]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {', '.join(missing)}")
        return cls(**converted)

    @classmethod
    def load(cls, config: str | Path | None = None, **overrides: Any) -> TrainArgs:
        """Defaults < the YAML file `config` < `overrides` (e.g. from command-line flags)."""
        values: dict[str, Any] = {}
        source = "arguments"
        if config is not None:
            path = Path(config)
            if not path.is_file():
                raise FileNotFoundError(f"--config {path} does not exist")
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as error:
                raise ValueError(f"{path}: not valid YAML: {error}") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a mapping of TrainArgs keys, got {type(loaded).__name__}")
            values = {str(k).replace("-", "_"): v for k, v in (loaded or {}).items()}
            source = str(path)
        values.update({k.replace("-", "_"): v for k, v in overrides.items()})
        return cls.from_dict(values, source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---- the command line ------------------------------------------------------------------------------
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each dataclass field, by field name (read from the source)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def add_arguments(parser: argparse.ArgumentParser, cls: type = TrainArgs) -> None:
    """One `--field-name` flag per field, help from its docstring. Flags not given stay unset, so a
    YAML value is overridden only by a flag the user typed."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = _flag(field.name)
        kind = _base_type(hints[field.name])
        doc = docs.get(field.name, "")
        if _required(field):
            doc += " (required)"
        elif field.default is not None and "default" not in doc:
            doc += f" (default: {field.default})"
        kwargs: dict[str, Any] = {
            "dest": field.name,
            "default": argparse.SUPPRESS,
            "help": doc.replace("%", "%%"),
        }
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if field.name in CHOICES:
            kwargs["choices"] = CHOICES[field.name]
        else:
            kwargs["metavar"] = kind.__name__.upper()
        parser.add_argument(flag, type=_parser_for(hints[field.name], field.name), **kwargs)


def from_namespace(namespace: argparse.Namespace, config: str | Path | None = None) -> TrainArgs:
    """TrainArgs from parsed flags (only those given) over the YAML file `config`."""
    names = {f.name for f in dataclasses.fields(TrainArgs)}
    given = {k: v for k, v in vars(namespace).items() if k in names}
    return TrainArgs.load(config, **given)


def convert(value: Any, hint: Any, name: str) -> Any:
    """A YAML or command-line value as the field's type; ValueError naming the field otherwise."""
    optional = type(None) in typing.get_args(hint)
    kind = _base_type(hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError(f"{_flag(name)} may not be empty")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"{_flag(name)} expects true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{_flag(name)} expects an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{_flag(name)} expects an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"{_flag(name)} expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{_flag(name)} expects a number, got {value!r}") from None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"{_flag(name)} expects text, got {value!r}")
    return str(value)


def _parser_for(hint: Any, name: str):
    def parse(text: str) -> Any:
        try:
            return convert(text, hint, name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _base_type(hint: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(args: TrainArgs, name: str, ok: bool, requirement: str) -> None:
    if not ok:
        raise ValueError(f"{_flag(name)} {requirement}; got {getattr(args, name)!r}")
