"""The benchmarks `adallava eval` runs: a world folder's (or JSON file's) benchmark entries, each
benchmark's samples as its official reader returns them, `--limit`, and the items to answer (MMBench:
every option rotation for circular evaluation)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adallava.eval import readers
from adallava.eval.args import BENCHMARKS, READERS
from adallava.eval.readers.mmbench import mmbench_rotations
from adallava.eval.records import MMBenchSample, Sample


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
    manifest, base = _manifest(data)
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


def _manifest(data: Path) -> tuple[dict, Path]:
    """(the manifest with its 'benchmarks', the folder its paths are relative to)."""
    if data.is_dir():
        from adallava.data.world.generate import read_manifest

        manifest = read_manifest(data)
        if manifest.get("split") != "test" or "benchmarks" not in manifest:
            raise ValueError(
                f"--data {data}: a {manifest.get('split')} world has no benchmarks; use a test world"
            )
        return manifest, data
    if not data.is_file():
        raise FileNotFoundError(f"--data {data} does not exist")
    try:
        manifest = json.loads(data.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"--data {data}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("benchmarks"), dict):
        raise ValueError(f"--data {data}: expected a JSON object with a 'benchmarks' object")
    return manifest, data.parent


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
