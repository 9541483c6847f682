"""`adallava world export --format lmms-eval`: a generated test world as local lmms-eval tasks.

Layout of the output folder (give it to `lmms-eval --include_path`):

    OUT/adallava_world.json                    what was exported: world, tasks, rows, lmms-eval version
    OUT/<task>/<task>.yaml                      includes lmms-eval's own config, points at the parquet
    OUT/<task>/<split>.parquet                  the rows (images embedded), schema in datasets' metadata

Parquet files are written with Hugging Face `datasets` (installed with lmms-eval), so
`datasets.load_dataset("parquet", ...)` reads the image column back as images, offline. The YAMLs
name lmms-eval's task configs by absolute path: export again after moving or upgrading lmms-eval.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adallava.integrations.lmms.tasks import TASKS, TASKS_BY_BENCHMARK, TaskSpec, task_config

MANIFEST = "adallava_world.json"
FORMAT = "adallava-world-lmms-eval"


def lmms_tasks_dir() -> Path:
    """The installed lmms_eval/tasks folder. ValueError with the install command when it is missing."""
    try:
        import lmms_eval.tasks
    except ImportError:
        raise ValueError(
            "exporting for lmms-eval needs lmms-eval: pip install 'adallava[lmms]' (docs/lmms-eval.md)"
        ) from None
    return Path(lmms_eval.tasks.__file__).resolve().parent


def features_of(spec: dict[str, Any]):
    """`TaskSpec.features` as `datasets.Features`."""
    import datasets

    def convert(kind):
        if isinstance(kind, dict):
            return {name: convert(inner) for name, inner in kind.items()}
        if isinstance(kind, list):
            return datasets.List(convert(kind[0]))
        if kind == "image":
            return datasets.Image()
        return datasets.Value(kind)

    return datasets.Features({name: convert(kind) for name, kind in spec.items()})


def dump_yaml(config: dict[str, Any]) -> str:
    """YAML text of a task config (plain scalars, lists and dicts; keys in the given order)."""
    import yaml

    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=False)


def export_task(spec: TaskSpec, samples: Sequence, out: Path, tasks_dir: Path) -> dict[str, Any]:
    """Write one task's parquet and YAML under out/<task>/; returns its manifest entry."""
    import datasets

    folder = out / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    rows = spec.rows(samples)
    dataset = datasets.Dataset.from_list(rows, features=features_of(spec.features))
    data_file = f"{spec.split}.parquet"
    dataset.to_parquet(str(folder / data_file))
    yaml_file = folder / f"{spec.name}.yaml"
    yaml_file.write_text(dump_yaml(task_config(spec, tasks_dir, data_file)), encoding="utf-8")
    return {
        "benchmark": spec.benchmark,
        "lmms_task": spec.lmms_task,
        "lmms_config": spec.lmms_config,
        "split": spec.split,
        "rows": len(rows),
        "yaml": str(yaml_file.relative_to(out)),
        "data": str((folder / data_file).relative_to(out)),
    }


def export_world(
    world: str | Path, out: str | Path, benchmarks: Sequence[str] | None = None
) -> dict[str, Any]:
    """Export the benchmarks of a test world (default: all six it has) as lmms-eval tasks under `out`;
    returns the manifest written to out/adallava_world.json."""
    from adallava.data.world import read_manifest
    from adallava.eval.world import load_benchmark

    world, out = Path(world).resolve(), Path(out)
    manifest = read_manifest(world)
    if manifest.get("split") != "test":
        raise ValueError(f"{world}: is a {manifest.get('split')!r} world; export a test world (--split test)")
    available = [name for name in manifest.get("benchmarks", {}) if name in TASKS_BY_BENCHMARK]
    chosen = list(benchmarks) if benchmarks else available
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise ValueError(
            f"{world}: no benchmark {', '.join(unknown)} to export (has: {', '.join(available)})"
        )
    tasks_dir = lmms_tasks_dir()
    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for spec in TASKS:
        if spec.benchmark in chosen:
            entries[spec.name] = export_task(spec, load_benchmark(world, spec.benchmark), out, tasks_dir)
    from importlib.metadata import version

    result = {
        "format": FORMAT,
        "world": str(world),
        "lmms_eval": version("lmms_eval"),
        "lmms_eval_tasks": str(tasks_dir),
        "tag": "adallava_world",
        "tasks": entries,
    }
    (out / MANIFEST).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def read_export(folder: str | Path) -> dict[str, Any]:
    """The manifest of an exported folder. ValueError when `folder` holds none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder}: no {MANIFEST}; make it with `adallava world export --format lmms-eval`")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an adallava lmms-eval export (format {data.get('format')!r})")
    return data
