"""Reading a generated test world (`adallava world generate --split test`) back through the
benchmark readers, as the evaluator does: the world's files are in each benchmark's own format."""

from __future__ import annotations

from pathlib import Path

from adallava.data.world import read_manifest
from adallava.eval import readers


def load_benchmark(world: str | Path, benchmark: str) -> list:
    """The samples of one benchmark of a test world, through the reader its manifest names."""
    manifest = read_manifest(world)
    entries = manifest.get("benchmarks", {})
    if benchmark not in entries:
        raise ValueError(f"{world}: no benchmark {benchmark!r} (has: {', '.join(entries) or 'none'})")
    entry = entries[benchmark]
    reader = getattr(readers, entry["reader"].rsplit(".", 1)[-1])
    files = {key: Path(world) / path for key, path in entry["files"].items()}
    return reader(**files, **entry["options"])
