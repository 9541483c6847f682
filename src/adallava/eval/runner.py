"""The evaluation loop behind `adallava eval`: benchmarks x methods x budgets of one model.

For each benchmark (read with its official reader), each method (`adallava.eval.methods`) and each
budget: batched greedy generation with left padding, predictions written in the format the official
scorer reads (so `adallava score` re-scores them), the benchmark's metric, and one results row with
the prefill FLOPs the model reports, budget violations, wall-clock time per answer, time to first
token and plan statistics. `DIR/results.json` and `DIR/results.csv` hold the rows (docs/evaluation.md).

Sharding: under `accelerate launch` each process answers every num_processes-th question; answers
are gathered and the main process scores and writes. Plans never depend on the batch or the shard.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from adallava.eval import metrics, readers
from adallava.eval.answer_processing import evalai_normalize
from adallava.eval.args import BENCHMARKS, METHODS, READERS, EvalArgs
from adallava.eval.methods import (
    Adaptive,
    Depth,
    EarlyExit,
    Full,
    RandomPlans,
    StaticChoice,
    StaticPlans,
    plan_with_upper,
    search_static,
    upper_layers_for,
)
from adallava.eval.readers.mmbench import mmbench_rotations
from adallava.eval.records import MMBenchSample, Sample
from adallava.io.hub import resolve_model

DEFAULT_MAX_NEW_TOKENS = 128  # LLaVA-1.5's model_vqa*.py default
IMAGE_TOKEN = "<image>"
RESULTS_JSON, RESULTS_CSV, STATIC_PLANS = "results.json", "results.csv", "static_plans.json"
CSV_COLUMNS = (
    "benchmark", "method", "budget", "score", "n", "answers", "llm_flops", "total_flops", "full_llm_flops",
    "decode_flops", "violations", "budget_use", "ms_per_sample", "ttft_ms", "mean_layers", "distinct_plans",
    "layer_usage", "metrics", "model", "protocol", "predictions", "score_command",
)  # fmt: skip


# ---- benchmark data -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Benchmark:
    """One benchmark's samples (as its reader returns them) and the files they came from."""

    name: str
    samples: tuple[Sample, ...]
    files: dict[str, Path]
    """The reader's path arguments (the scorer takes the same files)."""
    options: dict[str, Any]


@dataclass(frozen=True)
class Item:
    """One answer to generate: a sample, or one option rotation of an MMBench sample."""

    index: int
    key: str
    """Stable id within the benchmark: question id, and '@round' for MMBench rotations."""
    sample: Sample
    round_id: int = 0


def benchmark_entries(data: str | Path) -> dict[str, dict[str, Any]]:
    """name -> {reader, files (absolute paths), options}, from a world folder's manifest.json or from a
    JSON file with the same 'benchmarks' entries (paths relative to that file's folder)."""
    data = Path(data)
    if data.is_dir():
        from adallava.data.world.generate import read_manifest

        manifest, base = read_manifest(data), data
        if manifest.get("split") != "test" or "benchmarks" not in manifest:
            raise ValueError(
                f"--data {data}: a {manifest.get('split')} world has no benchmarks; use a test world"
            )
    elif data.is_file():
        try:
            manifest = json.loads(data.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"--data {data}: not valid JSON ({error.msg} at line {error.lineno})") from None
        base = data.parent
        if not isinstance(manifest, dict) or not isinstance(manifest.get("benchmarks"), dict):
            raise ValueError(f"--data {data}: expected a JSON object with a 'benchmarks' object")
    else:
        raise FileNotFoundError(f"--data {data} does not exist")
    entries = {}
    for name, entry in manifest["benchmarks"].items():
        where = f"--data {data}: benchmarks.{name}"
        if name not in READERS:
            raise ValueError(f"{where}: unknown benchmark (known: {', '.join(BENCHMARKS)})")
        reader = str(entry.get("reader", READERS[name])).rsplit(".", 1)[-1]
        if reader != READERS[name]:
            raise ValueError(f"{where}: reader must be {READERS[name]}, got {entry.get('reader')!r}")
        files = entry.get("files")
        if not isinstance(files, dict) or not files:
            raise ValueError(f"{where}: field 'files' must map the reader's arguments to paths")
        entries[name] = {
            "reader": reader,
            "files": {key: base / path for key, path in files.items()},
            "options": dict(entry.get("options", {})),
        }
    return entries


def load_benchmarks(data: str | Path, names: Sequence[str] = (), limit: int | None = None) -> list[Benchmark]:
    """The named benchmarks of `data` (all of them when `names` is empty), in BENCHMARKS order."""
    entries = benchmark_entries(data)
    missing = [name for name in names if name not in entries]
    if missing:
        raise ValueError(
            f"--data {data} has no benchmark {missing[0]!r} (has: {', '.join(entries) or 'none'})"
        )
    chosen = [name for name in BENCHMARKS if name in entries and (not names or name in names)]
    benchmarks = []
    for name in chosen:
        entry = entries[name]
        samples = getattr(readers, entry["reader"])(**entry["files"], **entry["options"])
        if not samples:
            raise ValueError(f"--data {data}: benchmark {name} has no questions")
        benchmarks.append(
            Benchmark(name, tuple(limit_samples(name, samples, limit)), entry["files"], entry["options"])
        )
    return benchmarks


def limit_samples(name: str, samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """The first `limit` questions; MME keeps whole image pairs, MMBench whole circular groups."""
    if limit is None:
        return list(samples)
    if name == "mme":
        return list(samples[: limit + limit % 2])
    if name == "mmbench":
        mains = [s.main_index for s in samples if int(s.question_id) < 1_000_000][:limit]
        keep = set(mains)
        return [s for s in samples if s.main_index in keep]
    return list(samples[:limit])


def benchmark_items(benchmark: Benchmark, protocol: str) -> list[Item]:
    """What to generate. MMBench under the llava protocol: every option rotation of every row (LLaVA's
    model_vqa_mmbench.py --all-rounds), for circular evaluation; otherwise one answer per sample."""
    items: list[Item] = []
    for sample in benchmark.samples:
        if benchmark.name == "mmbench" and protocol == "llava":
            assert isinstance(sample, MMBenchSample)
            for round_id, rotated in enumerate(mmbench_rotations(sample)):
                items.append(Item(len(items), f"{sample.question_id}@{round_id}", rotated, round_id))
        else:
            items.append(Item(len(items), str(sample.question_id), sample))
    return items


# ---- the model ----------------------------------------------------------------------------------------
def load_model(path: str | Path, dtype: str = "float32", device: str | torch.device = "cpu"):
    """(AdaLlava, processor, is_adaptive) from a folder or a bundled name. A plain HF Llava folder is
    wrapped with `AdaLlava.from_base` (P = N // 2), so explicit plans run on it; its scheduler is
    untrained."""
    from adallava.engine.llava import ADAPTIVE_CONFIG_FILE
    from adallava.io.hub import load_model as load_named

    folder = resolve_model(path)
    model, processor = load_named(folder, dtype=getattr(torch, dtype))
    processor.tokenizer.padding_side = "left"
    return model.to(device).eval(), processor, (folder / ADAPTIVE_CONFIG_FILE).is_file()


@dataclass(frozen=True)
class Answer:
    """One generated answer and what its prefill cost (FLOPs, per the model's cost model)."""

    index: int
    text: str
    layers: tuple[int, ...]
    """Executed decoder layers."""
    plan_key: str
    """Identifies the full plan (layers, and head/MLP units for head plans)."""
    unit_fraction: float | None
    """Head plans: the share of head units and MLP groups on, over all layers; None for layer plans."""
    llm_flops: float
    total_flops: float
    full_llm_flops: float
    decode_flops: float


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
        self._template = self._template_owner()
        self._form = self._probe_form() if self._template is not None else None
        self._warm = False

    # ---- prompts ----
    def _template_owner(self):
        if self.args.prompt_format == "llava_v1":
            return None
        for owner in (self.processor, self.tokenizer):
            if getattr(owner, "chat_template", None):
                return owner
        if self.args.prompt_format == "chat_template":
            raise ValueError(
                "--prompt-format chat_template: the model folder's processor has no chat template"
            )
        return None

    def _messages(self, prompt: str, image: bool, form: str) -> list[dict]:
        if form == "parts":
            parts = [{"type": "image"}] if image else []
            return [{"role": "user", "content": [*parts, {"type": "text", "text": prompt}]}]
        return [{"role": "user", "content": f"{self.image_token}\n{prompt}" if image else prompt}]

    def _probe_form(self) -> str:
        """Chat templates take content as typed parts or as a string with the image token inline."""
        probe = "adallava probe question"
        for form in ("parts", "text"):
            try:
                text = self._template.apply_chat_template(
                    self._messages(probe, True, form), tokenize=False, add_generation_prompt=True
                )
            except Exception:  # a template that cannot take this content form
                continue
            if probe in text and text.count(self.image_token) == 1:
                return form
        raise ValueError("the chat template renders the image and question in neither content form; "
                         "use --prompt-format llava_v1")  # fmt: skip

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

    def encode(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        """Left-padded input_ids / attention_mask [B, T] and pixel_values [I, 3, H, W]."""
        texts = [self.prompt(item.sample) for item in items]
        images = [image for image in (self.image(item.sample) for item in items) if image is not None]
        bos = self.tokenizer.bos_token
        inputs = self.processor(
            text=texts,
            images=images or None,
            padding=True,
            return_tensors="pt",
            add_special_tokens=not (bos and texts[0].startswith(bos)),  # the template may write BOS itself
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    # ---- generation ----
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def _generate(self, inputs: dict, plan_kwargs: dict, max_new_tokens: int):
        return self.model.generate(
            **inputs,
            **plan_kwargs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True,
        )

    @torch.no_grad()
    def _prefill(self, inputs: dict, plan_kwargs: dict) -> None:
        self.model(**inputs, **plan_kwargs, use_cache=True, logits_to_keep=1)

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
        batches = [shard[i : i + self.args.batch_size] for i in range(0, len(shard), self.args.batch_size)]
        show = self.args.progress and rank == 0
        answers: list[Answer] = []
        generate_s, prefill_s = 0.0, 0.0
        for batch in tqdm(
            batches, desc=desc, unit="batch", disable=not show, leave=leave, dynamic_ncols=True
        ):
            inputs = self.encode(batch)
            plan_kwargs = provider.kwargs(benchmark, [item.key for item in batch], budget)
            if not self._warm:  # first call: lazy initialisation, kernels, caches; not timed
                self._generate(inputs, plan_kwargs, 1)
                self._warm = True
            if self.args.measure_ttft:
                self._sync()
                start = time.perf_counter()
                self._prefill(inputs, plan_kwargs)
                self._sync()
                prefill_s += time.perf_counter() - start
            self._sync()
            start = time.perf_counter()
            out = self._generate(inputs, plan_kwargs, self.max_new_tokens)
            self._sync()
            generate_s += time.perf_counter() - start
            answers += self._answers(batch, inputs, out)
        timing = Timing(generate_s, prefill_s if self.args.measure_ttft else None, len(shard))
        if world > 1:
            from accelerate.utils import gather_object

            answers = gather_object(answers)
            timings = gather_object([timing])
            timing = Timing(
                sum(t.generate_s for t in timings),
                None if timing.prefill_s is None else sum(t.prefill_s for t in timings),
                sum(t.answers for t in timings),
            )
        return sorted(answers, key=lambda answer: answer.index), timing

    def _answers(self, batch: Sequence[Item], inputs: dict, out) -> list[Answer]:
        new = out.sequences[:, inputs["input_ids"].shape[1] :]  # [B, G]
        texts = [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        num_layers = self.model.num_layers
        plan = out.plan
        full = torch.ones(len(batch), num_layers, dtype=torch.bool)
        layers = plan.layers.cpu() if plan is not None else full  # [B, N]; the full model has no plan
        units = None
        if plan is not None and plan.heads is not None:
            heads = (plan.heads & plan.layers[..., None]).cpu()  # [B, N, H]
            mlp = (plan.mlp & plan.layers[..., None]).cpu()  # [B, N, G]
            units = torch.cat([heads.flatten(1), mlp.flatten(1)], dim=1)  # [B, N * (H + G)]
        llm, total = out.prefill_cost.llm.tolist(), out.prefill_cost.total.tolist()
        full_llm, decode = out.full_prefill_cost.llm.tolist(), out.decode_cost.total.tolist()
        answers = []
        for row, item in enumerate(batch):
            executed = tuple(layers[row].nonzero().flatten().tolist())
            key = ",".join(map(str, executed))
            fraction = None
            if units is not None:
                key += "/" + hashlib.blake2b(units[row].numpy().tobytes(), digest_size=8).hexdigest()
                fraction = float(units[row].float().mean())
            answers.append(
                Answer(
                    index=item.index,
                    text=texts[row],
                    layers=executed,
                    plan_key=key,
                    unit_fraction=fraction,
                    llm_flops=llm[row],
                    total_flops=total[row],
                    full_llm_flops=full_llm[row],
                    decode_flops=decode[row],
                )
            )
        return answers


# ---- scoring and files --------------------------------------------------------------------------------
def predictions_of(benchmark: str, items: Sequence[Item], answers: Sequence[Answer]) -> dict:
    """The metric's predictions: question_id -> text ((index, round_id) -> text for MMBench)."""
    if benchmark == "mmbench":
        return {
            (int(item.sample.question_id), item.round_id): a.text
            for item, a in zip(items, answers, strict=True)
        }
    return {item.sample.question_id: a.text for item, a in zip(items, answers, strict=True)}


def score(benchmark: Benchmark, predictions: Mapping, protocol: str):
    """The benchmark's metric result dataclass (`.score` on 0-100)."""
    samples = list(benchmark.samples)
    if benchmark.name == "mme":
        return metrics.score_mme(readers.mme_results(samples, predictions), protocol)
    return getattr(metrics, f"score_{benchmark.name}")(samples, predictions, protocol)


def write_predictions(
    benchmark: Benchmark, folder: Path, items: Sequence[Item], answers: Sequence[Answer], model_id: str
) -> Path:
    """Predictions in the official scorer's format, plus details.jsonl (each answer's plan and FLOPs).
    Returns the path `adallava score` takes: results.json (VQAv2), results/ (MME) or answers.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    details = []
    for item, answer in zip(items, answers, strict=True):
        line = {"question_id": item.sample.question_id, "round_id": item.round_id, "text": answer.text}
        line |= {k: v for k, v in asdict(answer).items() if k not in ("index", "text", "plan_key")}
        line["layers"] = list(answer.layers)
        details.append(line)
    _write_jsonl(folder / "details.jsonl", details)
    name = benchmark.name
    if name == "vqav2":  # as scripts/convert_vqav2_for_submission.py uploads it
        path = folder / "results.json"
        rows = [
            {"question_id": item.sample.question_id, "answer": evalai_normalize(answer.text)}
            for item, answer in zip(items, answers, strict=True)
        ]
        path.write_text(json.dumps(rows) + "\n", encoding="utf-8")
        return path
    if name == "mme":
        path = folder / "results"
        texts = {item.sample.question_id: a.text for item, a in zip(items, answers, strict=True)}
        readers.write_mme_results(readers.mme_results(list(benchmark.samples), texts), path)
        return path
    path = folder / "answers.jsonl"  # LLaVA's model_vqa*.py answers file
    lines = []
    for item, answer in zip(items, answers, strict=True):
        line = {"question_id": item.sample.question_id, "prompt": item.sample.prompt, "text": answer.text}
        if name == "mmbench":
            line["round_id"] = item.round_id
        lines.append(line | {"model_id": model_id, "metadata": {}})
    _write_jsonl(path, lines)
    return path


def score_command(benchmark: Benchmark, predictions: Path, protocol: str) -> list[str]:
    """The `adallava score` command that re-scores a predictions file."""
    files, name = benchmark.files, benchmark.name
    args = {
        "vqav2": ["--questions", files.get("questions"), "--annotations", files.get("annotations")],
        "textvqa": ["--annotations", files.get("annotations")],
        "pope": ["--questions", files.get("questions"), "--annotation-dir", files.get("annotation_dir")],
        "mme": [],
        "scienceqa": ["--problems", files.get("problems"), "--split-file", files.get("split_file")]
        + ["--split", benchmark.options.get("split", "test")],
        "mmbench": ["--data", files.get("path")],
    }[name]
    flag = "--results-dir" if name == "mme" else "--predictions"
    return ["adallava", "score", name, *map(str, args), flag, str(predictions), "--protocol", protocol]


def plan_statistics(answers: Sequence[Answer], num_layers: int) -> dict[str, Any]:
    """mean_layers (layers run per answer), layer_usage (per layer: share of answers running it),
    distinct_plans, and for head plans unit_fraction (share of head units and MLP groups on)."""
    masks = torch.zeros(len(answers), num_layers, dtype=torch.bool)
    for row, answer in enumerate(answers):
        masks[row, list(answer.layers)] = True
    stats = {
        "mean_layers": float(masks.sum(1).double().mean()),
        "layer_usage": [round(float(v), 6) for v in masks.double().mean(0)],
        "distinct_plans": len({answer.plan_key for answer in answers}),
    }
    fractions = [answer.unit_fraction for answer in answers if answer.unit_fraction is not None]
    if fractions:
        stats["unit_fraction"] = sum(fractions) / len(fractions)
    return stats


def budget_accounting(answers: Sequence[Answer], budget: float) -> tuple[int, float]:
    """(violations, budget_use): rows whose prefill LLM FLOPs exceed budget x their full LLM FLOPs (relative
    tolerance 1e-9), and the mean of cost / (budget x full cost) (1 = the budget exactly used)."""
    llm = torch.tensor([a.llm_flops for a in answers], dtype=torch.float64)
    cap = budget * torch.tensor([a.full_llm_flops for a in answers], dtype=torch.float64)
    return int((llm > cap * (1 + 1e-9)).sum()), float((llm / cap).mean())


def result_row(
    benchmark: Benchmark, method: str, budget: float, result, answers: Sequence[Answer], timing: Timing,
    num_layers: int, extra: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """One results row (see docs/evaluation.md for the schema)."""
    count = len(answers)
    violations, use = budget_accounting(answers, budget)
    row = {
        "benchmark": benchmark.name,
        "method": method,
        "budget": budget,
        "score": float(result.score),
        "metrics": _jsonable(asdict(result)),
        "n": int(result.n),
        "answers": count,
        "llm_flops": sum(a.llm_flops for a in answers) / count,
        "total_flops": sum(a.total_flops for a in answers) / count,
        "full_llm_flops": sum(a.full_llm_flops for a in answers) / count,
        "decode_flops": sum(a.decode_flops for a in answers) / count,
        "violations": violations,
        "budget_use": use,
        "ms_per_sample": 1000 * timing.generate_s / timing.answers,
        "ttft_ms": None if timing.prefill_s is None else 1000 * timing.prefill_s / timing.answers,
        **plan_statistics(answers, num_layers),
    }
    return row | dict(extra)


def method_order(method: str) -> tuple[int, str]:
    """Sort key of a method name, e.g. "adaptive" or "adaptive+prumerge" (base method, then selection)."""
    base, _, selection = method.partition("+")
    return METHODS.index(base), selection


def write_results(out: Path, rows: Sequence[dict]) -> list[dict]:
    """Merge `rows` into out/results.json (a row replaces an earlier one of the same benchmark, method
    and budget) and write results.csv. Returns all rows."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_JSON
    existing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    new = {_row_key(row) for row in rows}
    merged = [row for row in existing if _row_key(row) not in new] + list(rows)
    merged.sort(
        key=lambda row: (BENCHMARKS.index(row["benchmark"]), *method_order(row["method"]), row["budget"])
    )
    path.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    with (out / RESULTS_CSV).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in merged:
            writer.writerow([_csv_cell(row.get(column)) for column in CSV_COLUMNS])
    return merged


# ---- the static method's search -----------------------------------------------------------------------
def choose_static_plans(
    engine: Engine, args: EvalArgs, names: Sequence[str], depth: Depth, out: Path
) -> dict[str, dict[int, StaticChoice]]:
    """Per benchmark and per number k of upper layers the budgets buy, the best fixed set of k upper layers
    on the validation data. Cached in out/static_plans.json, reused while the settings match."""
    ks = sorted({upper_layers_for(depth, budget) for budget in args.budgets})
    meta = {
        "model": str(resolve_model(args.model).resolve()),
        "validation": str(Path(args.validation).resolve()),
        "validation_limit": args.validation_limit,
        "protocol": args.protocol,
        "max_new_tokens": engine.max_new_tokens,
        "prompt_format": args.prompt_format,
        "pad_to_square": args.pad_to_square,
        "dtype": args.dtype,
    }
    path = out / STATIC_PLANS
    cached: dict[str, dict[int, StaticChoice]] = {}
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("settings") == meta:
            cached = {
                name: {int(k): StaticChoice.from_dict(c) for k, c in choices.items()}
                for name, choices in stored.get("benchmarks", {}).items()
            }
    needed = [name for name in names if any(k not in cached.get(name, {}) for k in ks)]
    if needed:
        for benchmark in load_benchmarks(args.validation, needed, args.validation_limit):
            items = benchmark_items(benchmark, args.protocol)
            have = cached.setdefault(benchmark.name, {})

            def evaluate(upper: tuple[int, ...], benchmark=benchmark, items=items) -> float:
                provider = _Fixed(depth, upper)
                desc = f"static {benchmark.name} layers {','.join(map(str, upper))}"
                answers, _ = engine.answer(benchmark.name, items, provider, 1.0, desc, leave=False)
                return score(benchmark, predictions_of(benchmark.name, items, answers), args.protocol).score

            have.update(search_static(depth, [k for k in ks if k not in have], evaluate))
        if engine.state is None or engine.state.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            stored = {
                "settings": meta,
                "benchmarks": {
                    name: {str(k): c.to_dict() for k, c in sorted(choices.items())}
                    for name, choices in cached.items()
                },
            }
            path.write_text(json.dumps(stored, indent=1) + "\n", encoding="utf-8")
    return cached


@dataclass(frozen=True)
class _Fixed:
    """One plan for every question: a static-search candidate."""

    depth: Depth
    upper: tuple[int, ...]

    def kwargs(self, benchmark: str, keys: Sequence[str], budget: float) -> dict:
        return {"plan": plan_with_upper(self.depth, [self.upper] * len(keys))}


# ---- the whole run ------------------------------------------------------------------------------------
def make_provider(method: str, depth: Depth, args: EvalArgs):
    if method == "adaptive":
        return Adaptive()
    if method == "early-exit":
        return EarlyExit(depth)
    if method == "random":
        return RandomPlans(depth, args.seed)
    if method == "static":
        return StaticPlans(depth)
    return Full()


def evaluate(args: EvalArgs) -> list[dict]:
    """Run every (benchmark, method, budget) of `args`; write predictions, results.json and results.csv
    under args.out (main process). Returns this run's rows."""
    from accelerate import PartialState

    # cpu=True lets torchrun / accelerate shard over CPU processes (gloo) when no GPU is used.
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else state.device
    benchmarks = load_benchmarks(args.data, args.benchmarks, args.limit)
    model, processor, adaptive = load_model(args.model, args.dtype, device)
    if args.token_selection is not None:  # e.g. PruMerge on top of adaptive plans (issue 7)
        model.adaptive = replace(model.adaptive, token_selection=args.token_selection)
    depth = Depth(model.num_layers, model.num_prefix)
    providers = [make_provider(method, depth, args) for method in args.methods]
    for provider in providers:
        provider.check(depth, args.budgets, adaptive)
    engine = Engine(model, processor, args, device, state)
    out = Path(args.out)
    if any(isinstance(p, StaticPlans) for p in providers):
        choices = choose_static_plans(engine, args, [b.name for b in benchmarks], depth, out)
        providers = [StaticPlans(depth, choices) if isinstance(p, StaticPlans) else p for p in providers]
    deterministic = adaptive and model.adaptive.scheduler == "deterministic"
    model_id = Path(args.model).name
    rows = []
    for benchmark in benchmarks:
        items = benchmark_items(benchmark, args.protocol)
        for provider in providers:
            for budget in provider.budgets(args.budgets):
                desc = f"{benchmark.name} {provider.name} {budget:g}"
                answers, timing = engine.answer(benchmark.name, items, provider, budget, desc)
                if not state.is_main_process:
                    continue
                result = score(benchmark, predictions_of(benchmark.name, items, answers), args.protocol)
                folder = out / "predictions" / benchmark.name / provider.name / f"budget-{budget:g}"
                predictions = write_predictions(benchmark, folder, items, answers, model_id)
                extra: dict[str, Any] = {
                    "model": str(args.model),
                    "scheduler": model.adaptive.scheduler if adaptive else None,  # Table 2 groups by it
                    "protocol": args.protocol,
                    "max_new_tokens": engine.max_new_tokens,
                    "predictions": str(predictions.relative_to(out)),
                    # The official scorers need every question: a --limit run cannot be re-scored by them.
                    "score_command": None
                    if args.limit
                    else shlex.join(score_command(benchmark, predictions, args.protocol)),
                }
                if isinstance(provider, StaticPlans):
                    choice = provider.choices[benchmark.name][upper_layers_for(depth, budget)]
                    extra["static_plan"] = choice.to_dict()
                # Token selection is part of the method's name in results: "adaptive+prumerge".
                selection = model.adaptive.token_selection
                method = provider.name if selection == "none" else f"{provider.name}+{selection}"
                row = result_row(benchmark, method, budget, result, answers, timing, depth.num_layers, extra)
                if deterministic and isinstance(provider, Adaptive):  # the Table 2 ablation's numbers
                    row["metrics"] |= {"violations": row["violations"], "budget_use": row["budget_use"]}
                rows.append(row)
    if state.is_main_process:
        write_results(out, rows)
    return rows


# ---- helpers ------------------------------------------------------------------------------------------
def _row_key(row: Mapping[str, Any]) -> tuple[str, str, float]:
    return row["benchmark"], row["method"], row["budget"]


def _write_jsonl(path: Path, rows: Sequence[Mapping]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else value
