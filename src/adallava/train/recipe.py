"""The training recipe: `adallava train --config FILE.yaml` (setup / train / save_checkpoint).

Two stages, one loop:
- `base`: a HF `LlavaForConditionalGeneration` (e.g. a random initialisation) trained on all of its
  parameters with next-token loss on the answers.
- `adaptive`: a trained Llava wrapped as `AdaLlava` (a latency encoder and a scheduler are added) and
  fine-tuned with a random budget per sample (paper Sec. 3.3 / 4.1): the LLM at `learning_rate`, the
  scheduler and latency encoder at `scheduler_learning_rate`, the vision tower frozen; optionally the
  LLM through LoRA adapters.

Everything device-specific goes through `accelerate`, so the same command runs on a CPU, one GPU, or
several (`accelerate launch`, DDP; FSDP / DeepSpeed configs in docs/training.md). A run resumes
bit-identically from a checkpoint: model, optimizer, learning-rate schedule, every process's RNG
states and the position in the data are restored, and all remaining randomness (data order, budgets,
plan sampling) is a function of (seed, epoch or micro-batch index, process).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import DistributedType, GradientAccumulationPlugin, parse_flag_from_env, set_seed
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoProcessor, LlavaForConditionalGeneration

from adallava.core.config import AdaptiveConfig
from adallava.data.conversation import IMAGE_TOKEN, ConversationCollator, ConversationDataset
from adallava.engine.llava import ADAPTIVE_CONFIG_FILE, ADAPTIVE_WEIGHTS_FILE, AdaLlava
from adallava.engine.switches import unit_settings_of_other_kinds
from adallava.io.hub import resolve_model, resolve_processor
from adallava.train.args import TrainArgs

LOG_FILE = "log.jsonl"
ARGS_FILE = "train_args.yaml"
STATE_FILE = "trainer_state.json"  # written last: a checkpoint without it is incomplete
CHECKPOINT_PREFIX = "checkpoint-"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---- small pure pieces ------------------------------------------------------------------------------
def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based): linear warm-up to 1
    over `warmup_steps`, then flat, or a cosine / linear decay to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant_with_warmup":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    raise ValueError(f"unknown lr_schedule {schedule!r}")


def sample_budgets(
    batch: int, prefix_units: int, total_units: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A training budget per sample, uniform over the number of units that run: randint(Pu, Nu + 1) / Nu
    (as the paper's code; drawing the fraction uniformly would almost never give the full model).
    -> float32 [B] in [Pu / Nu, 1]."""
    return torch.randint(prefix_units, total_units + 1, (batch,), generator=generator) / total_units


def derived_seed(seed: int, process: int, index: int, stream: int) -> int:
    """A seed that depends only on its arguments, so a resumed run draws the same numbers."""
    return ((((seed * 1_000_003) + process) * 1_000_033 + index) * 8 + stream) % (2**63 - 1)


class EpochSampler(torch.utils.data.Sampler[int]):
    """A shuffled order of the dataset that depends only on (seed, epoch): a run can skip to any
    position of any epoch without replaying the ones before."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        rng = torch.Generator().manual_seed(derived_seed(self.seed, 0, self.epoch, stream=0))
        yield from torch.randperm(self.size, generator=rng).tolist()


# ---- setup ------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything `setup` builds; `train` and `save_checkpoint` use it."""

    args: TrainArgs
    accelerator: Accelerator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    dataloader: torch.utils.data.DataLoader
    dataset: ConversationDataset
    processor: object
    budget_units: tuple[int, int] | None  # (Pu, Nu) in the adaptive stage
    total_steps: int
    micro_batches_per_epoch: int
    start_step: int = 0
    elapsed_s: float = 0.0

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    @property
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def global_batch(self) -> int:
        return self.args.batch_size * self.args.gradient_accumulation_steps * self.accelerator.num_processes


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    steps: int
    final_loss: float
    seconds_per_step: float
    samples_per_s: float
    skipped_samples: int


def setup(args: TrainArgs) -> Run:
    """Load data, model and processor; build optimizer, schedule and accelerator; restore a checkpoint."""
    # Local folders or bundled names only, checked first: a missing folder is never looked up on the Hub.
    model_dir = resolve_model(args.model, flag="model (--model)")
    processor_dir = resolve_processor(model_dir, args.processor)
    # The process state (and so the device) before the Accelerator: mixed precision depends on it.
    # ACCELERATE_USE_CPU is what `accelerate launch --cpu` sets; the Accelerator would read it too late.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    mixed_precision = _mixed_precision(args.mixed_precision, state.device)
    processor = AutoProcessor.from_pretrained(processor_dir)
    dataset = _dataset(args, processor)
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        # The schedule is written in optimizer steps; accelerate would otherwise step it once per process.
        step_scheduler_with_optimizer=False,
        # Text-only batches leave the vision side unused, a budget of P/N the scheduler head.
        kwargs_handlers=[
            DistributedDataParallelKwargs(
                find_unused_parameters=args.stage == "adaptive" or dataset.num_text_only > 0
            )
        ],
    )
    set_seed(args.seed)  # the same new weights (scheduler, LoRA) on every process
    model = _load_model(args, model_dir)
    llava = model.llava if isinstance(model, AdaLlava) else model
    _check_processor(dataset, llava)
    llava.model.vision_tower.requires_grad_(args.train_vision_tower)
    if args.lora:
        _add_lora(model, args, accelerator)
    if args.gradient_checkpointing:
        llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    dataloader = _dataloader(args, dataset, processor, accelerator)
    optimizer = torch.optim.AdamW(_param_groups(model, args), lr=args.learning_rate)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    micro_per_epoch = len(dataloader)
    total_steps = args.max_steps or math.ceil(
        args.epochs * micro_per_epoch / args.gradient_accumulation_steps
    )
    warmup = args.warmup_steps or round(args.warmup_ratio * total_steps)
    factor = functools.partial(
        lr_factor,
        total_steps=total_steps,
        warmup_steps=warmup,
        schedule=args.lr_schedule,
        min_ratio=args.min_lr_ratio,
    )
    lr_scheduler = accelerator.prepare(torch.optim.lr_scheduler.LambdaLR(optimizer, factor))

    unwrapped = accelerator.unwrap_model(model)
    # Budget units (Pu, Nu): layers for layer switches, groups of `rank` head units for head switches.
    units = (unwrapped.prefix_units, unwrapped.total_units) if isinstance(unwrapped, AdaLlava) else None
    run = Run(args, accelerator, model, optimizer, lr_scheduler, dataloader, dataset, processor, units,
              total_steps, micro_per_epoch)  # fmt: skip
    if args.resume:
        _restore(run, _find_checkpoint(args))
    return run


def _dataset(args: TrainArgs, processor) -> ConversationDataset:
    return ConversationDataset(
        args.data,
        args.image_folder,
        processor,
        max_length=args.max_length,
        prompt_format=args.prompt_format,
        system_prompt=args.system_prompt,
        pad_to_square=args.pad_to_square,
        skip_bad=args.skip_bad,
        cache_tokens=args.cache_tokens,
        cache_images=args.cache_images,
    )


def _dataloader(args: TrainArgs, dataset, processor, accelerator: Accelerator) -> torch.utils.data.DataLoader:
    pad_id = processor.tokenizer.pad_token_id
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=EpochSampler(len(dataset), args.seed),
        collate_fn=ConversationCollator(pad_id if pad_id is not None else processor.tokenizer.eos_token_id),
        num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0,
        pin_memory=accelerator.device.type == "cuda",
        # Its own generator, so that starting an epoch never draws from the global RNG.
        generator=torch.Generator().manual_seed(args.seed),
    )


def _mixed_precision(requested: str, device: torch.device) -> str:
    if requested == "no":
        return "no"
    if device.type == "cpu":
        PartialState().print(
            f"note: --mixed-precision {requested} needs an accelerator; training on the CPU in fp32"
        )
        return "no"
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--mixed-precision bf16: this GPU does not support bf16; use fp16")
    return requested


def _load_model(args: TrainArgs, path: Path) -> nn.Module:
    is_adaptive = (path / ADAPTIVE_CONFIG_FILE).is_file()
    if args.stage == "base":
        if is_adaptive:
            raise ValueError(f"--model {path} is an AdaLlava checkpoint; the base stage trains a HF Llava")
        return LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    adaptive = args.adaptive
    # Temperature and latency-loss weight are training choices, not properties of a checkpoint.
    training = {"tau": adaptive.tau, "latency_loss_weight": adaptive.latency_loss_weight}
    if is_adaptive:  # continue adaptive training; the checkpoint's adaptive settings stand
        model = AdaLlava.from_pretrained(path, dtype=torch.float32)
        saved = model.adaptive
        # Keys left at None (num_prefix_layers, mlp_groups) mean "the checkpoint's".
        wanted = {k: v for k, v in adaptive.to_dict().items() if v is not None and k not in training}
        have = saved.to_dict()
        kind = type(model.switches)
        if "mlp_groups" in kind.unit_settings:  # mlp_groups None was resolved against the model
            have["mlp_groups"] = model.geometry.mlp_groups
        ignored = unit_settings_of_other_kinds(kind)  # e.g. rank and MLP groups for layer switches
        wanted = {k: v for k, v in wanted.items() if k not in ignored}
        differ = [k for k, v in wanted.items() if have[k] != v]
        if differ:
            found = ", ".join(f"adaptive.{k}={have[k]!r}" for k in differ)
            raise ValueError(f"--model {path} was trained with {found}; set those keys to match")
        model.adaptive = AdaptiveConfig.from_dict({**saved.to_dict(), **training})
        return model
    base = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    try:
        return AdaLlava.from_base(base, adaptive)
    except NotImplementedError as error:  # a switch kind the engine does not have
        raise ValueError(f"--adaptive.switches {adaptive.switches}: {error}") from error


def _check_processor(dataset: ConversationDataset, llava: LlavaForConditionalGeneration) -> None:
    """The processor must expand <image> into exactly as many tokens as the vision tower gives features."""
    config = llava.config
    if dataset.image_token_id != config.image_token_id:
        raise ValueError(
            f"the tokenizer's {IMAGE_TOKEN} id is {dataset.image_token_id} but the model's image_token_id is "
            f"{config.image_token_id}; use the processor saved with this model (--processor)"
        )
    first = next((i for i, r in enumerate(dataset.records) if "image" in r), None)
    if first is None:
        return
    found = int((dataset[first].input_ids == config.image_token_id).sum())
    vision = config.vision_config
    expected = (vision.image_size // vision.patch_size) ** 2
    expected += config.vision_feature_select_strategy == "full"
    if found != expected:
        raise ValueError(
            f"the processor expands {IMAGE_TOKEN} into {found} tokens but the model's vision tower gives "
            f"{expected} features per image; check the processor's patch_size, num_additional_image_tokens, "
            "vision_feature_select_strategy and image size against the model config"
        )


def _add_lora(model: nn.Module, args: TrainArgs, accelerator: Accelerator) -> None:
    """LoRA adapters on the LLM's projections; everything else of the LLM frozen. The projector,
    scheduler and latency encoder keep training fully."""
    try:
        import peft
    except ImportError:
        raise ValueError("--lora needs PEFT: pip install peft") from None
    if _is_sharded(accelerator):
        raise ValueError("--lora is supported with DDP or DeepSpeed ZeRO-1/2, not with FSDP or ZeRO-3")
    config = peft.LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=LORA_TARGETS
    )
    peft.inject_adapter_in_model(config, model.text_model)
    for name, parameter in model.text_model.named_parameters():
        parameter.requires_grad_(".lora_" in name)
    model.llava.lm_head.requires_grad_(False)


def _adaptive_modules(model: nn.Module) -> nn.ModuleList:
    """The parts AdaLLaVA adds to a Llava (trained at `scheduler_learning_rate`); none for a Llava."""
    if isinstance(model, AdaLlava):
        return nn.ModuleList([model.latency_encoder, model.scheduler])
    return nn.ModuleList()


def _param_groups(model: nn.Module, args: TrainArgs) -> list[dict]:
    """AdamW groups: the model at `learning_rate` (adaptive stage: the scheduler and latency encoder at
    `scheduler_learning_rate`); weight decay only on matrices (not on biases and norms)."""
    adaptive = {id(p) for p in _adaptive_modules(model).parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        part = "scheduler" if id(parameter) in adaptive else "model"
        groups.setdefault((part, parameter.ndim >= 2), []).append(parameter)
    lrs = {"model": args.learning_rate, "scheduler": args.scheduler_learning_rate}
    return [
        {"params": params, "lr": lrs[part], "weight_decay": args.weight_decay if decay else 0.0, "name": part}
        for (part, decay), params in groups.items()
    ]


# ---- training ---------------------------------------------------------------------------------------
def micro_batches(run: Run, start: int) -> Iterator[dict]:
    """Micro-batches from global position `start` on, across epochs; epoch e's order depends only on
    (seed, e), so a resumed run skips the consumed batches without loading them."""
    epoch, offset = divmod(start, run.micro_batches_per_epoch)
    while True:
        run.dataloader.set_epoch(epoch)
        loader = run.accelerator.skip_first_batches(run.dataloader, offset) if offset else run.dataloader
        yield from loader
        epoch, offset = epoch + 1, 0


def forward_loss(
    run: Run, batch: dict, micro_index: int, plan_generator: torch.Generator | None
) -> torch.Tensor:
    """Mean next-token loss over the answer tokens of one micro-batch; in the adaptive stage each sample
    gets a random budget and its plan is sampled (straight-through Gumbel-softmax) by the model."""
    extra = {}
    if run.budget_units is not None:
        process = run.accelerator.process_index
        seed = functools.partial(derived_seed, run.args.seed, process, micro_index)
        budgets = sample_budgets(
            batch["input_ids"].shape[0], *run.budget_units, torch.Generator().manual_seed(seed(stream=1))
        )
        plan_generator.manual_seed(seed(stream=2))
        extra = {"budget": budgets.to(run.accelerator.device), "generator": plan_generator}
    return run.model(**batch, use_cache=False, **extra).loss


def train_step(
    run: Run, stream: Iterator[dict], step: int, plan_generator
) -> tuple[float, float | None, int]:
    """One optimizer step over `gradient_accumulation_steps` micro-batches.
    Returns (mean loss over micro-batches and processes, gradient norm before clipping, samples)."""
    accelerator, args = run.accelerator, run.args
    accum = args.gradient_accumulation_steps
    losses, grad_norm, samples = [], None, 0
    for micro in range(accum):
        batch = next(stream)
        with accelerator.accumulate(run.model):  # syncs gradients and steps on the last micro-batch only
            loss = forward_loss(run, batch, step * accum + micro, plan_generator)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if args.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(run.trainable_parameters, args.max_grad_norm)
                run.optimizer.step()
                run.lr_scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        samples += batch["input_ids"].shape[0] * accelerator.num_processes
    mean = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
    return mean, None if grad_norm is None else float(grad_norm), samples


def train(args: TrainArgs) -> TrainResult:
    """Run the recipe end to end; returns where the model went and how fast it trained."""
    run = setup(args)
    accelerator, args, output = run.accelerator, run.args, run.output_dir
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        (output / ARGS_FILE).write_text(args.to_yaml())
        _trim_log(output / LOG_FILE, run.start_step)
    accelerator.print(_summary(run))
    plan_generator = torch.Generator(device=accelerator.device) if run.budget_units else None
    stream = micro_batches(run, run.start_step * args.gradient_accumulation_steps)
    progress = tqdm(
        total=run.total_steps,
        initial=run.start_step,
        unit="step",
        disable=not (args.progress_bar and accelerator.is_local_main_process),
    )
    run.model.train()
    started = window_start = time.perf_counter()
    elapsed_before, window_samples, smooth, loss = run.elapsed_s, 0, None, float("nan")
    for step in range(run.start_step, run.total_steps):
        # The learning rates this step uses (the schedule moves them on inside train_step).
        rates = {f"lr_{group['name']}": group["lr"] for group in run.optimizer.param_groups}
        loss, grad_norm, samples = train_step(run, stream, step, plan_generator)
        done, now = step + 1, time.perf_counter()
        run.elapsed_s = elapsed_before + now - started
        window_samples += samples
        speed = window_samples / (now - window_start)
        smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss
        progress.update(1)
        progress.set_postfix(loss=f"{smooth:.4f}", samples_s=f"{speed:.1f}")
        if done % args.log_every == 0 or done == run.total_steps:
            epoch = done * args.gradient_accumulation_steps / run.micro_batches_per_epoch
            record = {"step": done, "epoch": epoch, "loss": loss, **rates, "grad_norm": grad_norm,
                      "samples_per_s": speed, "elapsed_s": run.elapsed_s}  # fmt: skip
            if accelerator.is_main_process:
                with open(output / LOG_FILE, "a") as log:
                    log.write(json.dumps(record) + "\n")
            window_start, window_samples = time.perf_counter(), 0
        if args.save_every and done % args.save_every == 0 and done < run.total_steps:
            save_checkpoint(run, done)
    progress.close()
    steps_run, seconds = run.total_steps - run.start_step, time.perf_counter() - started
    save_model(run, output)
    accelerator.print(f"saved the {args.stage} model to {output}")
    accelerator.end_training()
    return TrainResult(
        output_dir=output,
        steps=run.total_steps,
        final_loss=loss,
        seconds_per_step=seconds / max(1, steps_run),
        samples_per_s=steps_run * run.global_batch / max(seconds, 1e-9),
        skipped_samples=len(run.dataset.skipped),
    )


def _summary(run: Run) -> str:
    args, dataset = run.args, run.dataset
    trainable = sum(p.numel() for p in run.trainable_parameters)
    skipped = f" ({len(dataset.skipped)} bad ones skipped)" if dataset.skipped else ""
    resuming = f", resuming at step {run.start_step}" if run.start_step else ""
    return (
        f"adallava train ({args.stage}): {len(dataset)} samples{skipped}, {run.total_steps} steps of "
        f"{run.global_batch} samples, {trainable / 1e6:.2f}M trainable parameters, "
        f"{run.accelerator.num_processes} process(es) on {run.accelerator.device.type}{resuming}"
    )


# ---- saving and resuming ---------------------------------------------------------------------------
def save_model(run: Run, directory: Path) -> None:
    """The model in Hugging Face form (safetensors), loadable offline with its processor: a Llava folder
    (base stage) or an AdaLlava folder (adaptive stage); LoRA adapters are merged into the weights."""
    accelerator = run.accelerator
    state = accelerator.get_state_dict(run.model)  # every process takes part (gathers sharded weights)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(run.model)
        if run.args.lora:
            state = merge_lora(model, state)
        if isinstance(model, AdaLlava):
            model.scheduler_trained = True  # saved in adaptive_config.json: budgets are allowed from now on
            prefix = next(f"{name}." for name, child in model.named_children() if child is model.llava)
            llava_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            model.save_pretrained(directory, state_dict=llava_state)
            if _is_sharded(accelerator):  # the modules hold shards; write the gathered adaptive weights
                adaptive = {k: v.contiguous().cpu() for k, v in state.items() if not k.startswith(prefix)}
                save_file(adaptive, str(directory / ADAPTIVE_WEIGHTS_FILE), metadata={"format": "pt"})
        else:
            model.save_pretrained(directory, state_dict=state)
        run.processor.save_pretrained(directory)
    accelerator.wait_for_everyone()


def merge_lora(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with each LoRA layer folded into its base weight, W + scaling * B @ A, under the
    original (PEFT-free) names. The model is not changed."""
    from peft.tuners.lora import LoraLayer

    state = dict(state)
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        weight = state.pop(f"{name}.base_layer.weight")
        for adapter in module.active_adapters:
            a = state.pop(f"{name}.lora_A.{adapter}.weight")  # [r, in]
            b = state.pop(f"{name}.lora_B.{adapter}.weight")  # [out, r]
            weight = weight + (module.scaling[adapter] * (b.float() @ a.float())).to(weight.dtype)
        state[f"{name}.weight"] = weight
        if f"{name}.base_layer.bias" in state:
            state[f"{name}.bias"] = state.pop(f"{name}.base_layer.bias")
    leftover = [k for k in state if ".lora_" in k]
    if leftover:
        raise RuntimeError(f"LoRA weights left after merging: {leftover[:3]}")
    return state


def save_checkpoint(run: Run, step: int) -> Path:
    """`output_dir/checkpoint-STEP/`: the model (as `save_model`, loadable on its own), `state/` (model,
    optimizer, schedule, RNG states of every process: `accelerator.save_state`) and trainer_state.json
    (step, elapsed time, batch geometry), written last."""
    accelerator = run.accelerator
    directory = run.output_dir / f"{CHECKPOINT_PREFIX}{step}"
    save_model(run, directory)
    accelerator.save_state(str(directory / "state"))
    if accelerator.is_main_process:
        state = {
            "step": step,
            "elapsed_s": run.elapsed_s,
            "global_batch": run.global_batch,
            "micro_batches_per_epoch": run.micro_batches_per_epoch,
            "num_processes": accelerator.num_processes,
            "total_steps": run.total_steps,
        }
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        if run.args.save_total_limit:
            for old in _checkpoints(run.output_dir)[: -run.args.save_total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return directory


def _checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [
        p
        for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if (p / STATE_FILE).is_file() and p.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def _find_checkpoint(args: TrainArgs) -> Path:
    if args.resume == "latest":
        found = _checkpoints(Path(args.output_dir))
        if not found:
            raise FileNotFoundError(f"--resume latest: no complete checkpoint in {args.output_dir}")
        return found[-1]
    path = Path(args.resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def _restore(run: Run, checkpoint: Path) -> None:
    state = json.loads((checkpoint / STATE_FILE).read_text())
    for key, now in (
        ("global_batch", run.global_batch),
        ("micro_batches_per_epoch", run.micro_batches_per_epoch),
        ("num_processes", run.accelerator.num_processes),
    ):
        if state[key] != now:
            raise ValueError(
                f"--resume {checkpoint}: it was trained with {key} {state[key]}, this run has {now}; keep "
                "batch_size, gradient_accumulation_steps, the data and the number of processes unchanged"
            )
    run.accelerator.load_state(str(checkpoint / "state"))
    run.start_step, run.elapsed_s = state["step"], state["elapsed_s"]


def _trim_log(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint (a run that went on after it); start afresh otherwise."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(f"{line}\n" for line in kept))


def _is_sharded(accelerator: Accelerator) -> bool:
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return False
