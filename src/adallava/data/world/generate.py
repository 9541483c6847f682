"""`generate_world`: a split of the synthetic world on disk, with its manifest.

* train: `train.json` (LLaVA conversation JSON, as llava_v1_5_mix665k.json) + `images/` + scenes.
* test: one folder per benchmark in its official format (read by `adallava.eval.readers`), plus
  `heldout.jsonl`, every test question in one LLaVA question file with its answer and family.

Determinism: every random draw comes from `scene.stream(seed, split, purpose)`, and files are written
in a fixed order with deterministic encoders, so a (seed, n, split) gives byte-identical files.
Disjointness: a scene belongs to train or test by a hash of its layout (`Scene.split`), so no test
image layout (and hence no image/question pair) can occur in any training set, whatever the seeds.
"""

from __future__ import annotations

import json
import random
from bisect import bisect
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from tqdm import tqdm

from adallava.data.benchmarks import BENCHMARKS, READERS
from adallava.data.world import formats
from adallava.data.world.formats import Question
from adallava.data.world.questions import (
    FAMILIES,
    FAMILY,
    MME_SUBTASKS,
    POPE_KINDS,
    QA,
    CategoryStats,
    Family,
    make_question,
    pope,
    prompt_for,
)
from adallava.data.world.render import encode, render
from adallava.data.world.scene import (
    CELL,
    DEFAULT_LAYOUT,
    GRID,
    SPLITS,
    Layout,
    Scene,
    get_layout,
    sample_scene,
    scene_from_json,
    stream,
)

WORLD_FORMAT = "adallava-world"
VERSION = 1
MANIFEST = "manifest.json"
STATS_SCENES = 2000  # reference scenes for the POPE statistics of the training split
MAX_TRIES = 500


@dataclass(frozen=True)
class HeldoutQuestion:
    """A line of heldout.jsonl: `image` is resolved against the world folder."""

    question_id: str
    image: Path
    prompt: str
    answer: str
    family: str
    benchmark: str
    benchmark_question_id: int | str


def generate_world(
    out: str | Path,
    *,
    split: str = "train",
    seed: int = 0,
    n: int = 40_000,
    progress: bool = True,
    layout: str = DEFAULT_LAYOUT,
) -> dict[str, Any]:
    """Write one split of the world under `out` and return its manifest (also `out/manifest.json`).

    n: training samples (train), or questions per family (test, so that the overall accuracy over
    heldout.jsonl weighs every family alike; POPE and MME round n down to even: a yes and a no
    question per image). seed: any integer >= 0; the split is mixed into every stream. layout: "v2"
    (48 px images, one patch per cell) or "v3" (96 px, 2 x 2 patches per cell; `scene.LAYOUTS`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    drawn = get_layout(layout)
    out = Path(out)
    if (out / MANIFEST).exists():
        raise ValueError(f"{out}: already holds a world ({MANIFEST}); choose an empty --out folder")
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "format": WORLD_FORMAT,
        "version": VERSION,
        "split": split,
        "seed": seed,
        "n": n,
        "layout": drawn.name,
        "image_size": drawn.image_size,
        "patch_size": CELL,
        "grid": GRID,
        "subcells": drawn.subcells,
    }
    body = (_train if split == "train" else _test)(out, seed, n, progress, drawn)
    manifest.update(body)
    manifest["needs_depth"] = [f.name for f in FAMILIES if f.needs_depth]
    formats.write_json(out / MANIFEST, manifest)
    return manifest


def draw_question(
    family: Family,
    rng: random.Random,
    split: str,
    stats: CategoryStats | None = None,
    layout: Layout | None = None,
) -> tuple[Scene, QA]:
    """A scene of `split` (drawn in `layout`, default v2) that supports `family`, and the question
    drawn on it."""
    layout = layout or get_layout(DEFAULT_LAYOUT)
    for _ in range(MAX_TRIES):
        scene = sample_scene(rng, split, family.shape_counts, family.letter_counts, layout=layout)
        qa = make_question(family, scene, rng, stats)
        if qa is not None:
            return scene, qa
    raise RuntimeError(f"family {family.name}: no suitable scene in {MAX_TRIES} draws")


def training_stats(seed: int) -> CategoryStats:
    """POPE statistics (frequency, co-occurrence) of reference training scenes."""
    rng = stream(seed, "train", "pope-stats")
    return CategoryStats.of(sample_scene(rng, "train") for _ in range(STATS_SCENES))


# ---- train ----------------------------------------------------------------------------------------


def _train(out: Path, seed: int, n: int, progress: bool, layout: Layout) -> dict[str, Any]:
    rng = stream(seed, "train", "questions")
    stats = training_stats(seed)
    cumulative = list(accumulate(f.weight for f in FAMILIES))
    (out / "images").mkdir(exist_ok=True)
    records, scenes, counts = [], [], Counter()
    for i in tqdm(range(n), desc="world train", unit="sample", disable=not progress, mininterval=1.0):
        family = FAMILIES[min(bisect(cumulative, rng.random() * cumulative[-1]), len(FAMILIES) - 1)]
        scene, qa = draw_question(family, rng, "train", stats, layout)
        image = f"images/{i:06d}.png"
        (out / image).write_bytes(encode(render(scene, layout)))
        sample_id = f"world-{i:06d}"
        records.append(
            formats.llava_conversation(sample_id, image, prompt_for(family.benchmark, qa), qa.answer)
        )
        scenes.append({"id": sample_id, "image": image, "family": family.name, "objects": scene.to_json()})
        counts[family.name] += 1
    (out / "train.json").write_text(json.dumps(records, ensure_ascii=False) + "\n", encoding="utf-8")
    formats.write_jsonl(out / "scenes.jsonl", scenes)
    return {
        "conversations": "train.json",
        "image_folder": ".",
        "scenes": "scenes.jsonl",
        "families": {f.name: counts[f.name] for f in FAMILIES},
    }


# ---- test -----------------------------------------------------------------------------------------


@dataclass
class _Bench:
    """What one benchmark writer produced: reader arguments and the held-out lines."""

    files: dict[str, str]
    options: dict[str, Any]
    heldout: list[dict[str, Any]]
    scenes: list[dict[str, Any]]


def _test(out: Path, seed: int, n: int, progress: bool, layout: Layout) -> dict[str, Any]:
    benchmarks, heldout, scenes = {}, [], []
    for name in tqdm(BENCHMARKS, desc="world test", unit="benchmark", disable=not progress):
        rng = stream(seed, "test", name)
        if name == "pope":
            bench = _pope(out / name, rng, n, layout)
        elif name == "mme":
            bench = _mme(out / name, rng, n, layout)
        else:
            bench = _one_question_per_image(out / name, rng, n, name, layout)
        benchmarks[name] = {
            "folder": name,
            "reader": f"adallava.eval.readers.{READERS[name]}",
            "files": {key: f"{name}/{path}" for key, path in bench.files.items()},
            "options": bench.options,
            "questions": len(bench.heldout),
            "families": dict(sorted(Counter(row["category"] for row in bench.heldout).items())),
        }
        for row in bench.heldout + bench.scenes:
            row["image"] = f"{name}/{row['image']}"
        heldout += bench.heldout
        scenes += bench.scenes
    formats.write_jsonl(out / "heldout.jsonl", heldout)
    formats.write_jsonl(out / "scenes.jsonl", scenes)
    return {
        "heldout": "heldout.jsonl",
        "scenes": "scenes.jsonl",
        "benchmarks": benchmarks,
        "families": dict(sorted(Counter(row["category"] for row in heldout).items())),
    }


def _heldout(benchmark: str, question_id: int | str, image: str, qa: QA, prompt: str) -> dict[str, Any]:
    return {
        "question_id": f"{benchmark}/{question_id}",
        "image": image,
        "text": prompt,
        "category": qa.family,
        "benchmark": benchmark,
        "benchmark_question_id": question_id,
        "answer": qa.answer,
    }


def _save(folder: Path, image: str, scene: Scene, layout: Layout, fmt: str = "PNG") -> bytes:
    data = encode(render(scene, layout), fmt)
    path = folder / image
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _families(benchmark: str) -> list[Family]:
    return [f for f in FAMILIES if f.benchmark == benchmark]


@dataclass(frozen=True)
class _Layout:
    """Where a one-question-per-image benchmark keeps things: the image path pattern ({k}: the question
    id), the encoding its file names promise, its reader's image folder and non-file options."""

    image: str
    fmt: str
    image_dir: str | None
    first_id: int = 1
    options: tuple[tuple[str, Any], ...] = ()


LAYOUTS = {
    "vqav2": _Layout(f"images/{formats.VQAV2_IMAGE}", "JPEG", "images"),
    "textvqa": _Layout("train_images/world{k:06d}.jpg", "JPEG", "train_images"),
    "scienceqa": _Layout("images/test/{k}/image.png", "PNG", "images/test", options=(("split", "test"),)),
    "mmbench": _Layout("images/{k}.png", "PNG", None, first_id=0),  # PNG copies of the TSV's base64
}


def _one_question_per_image(
    folder: Path, rng: random.Random, n: int, benchmark: str, drawn: Layout
) -> _Bench:
    """n questions of each of the benchmark's families, in turn, each on its own image."""
    layout, families = LAYOUTS[benchmark], _families(benchmark)
    questions, heldout, scenes, images = [], [], [], {}
    for i in range(n * len(families)):
        scene, qa = draw_question(families[i % len(families)], rng, "test", layout=drawn)
        k = i + layout.first_id
        question_id = str(k) if benchmark == "scienceqa" else k  # ScienceQA's pids are strings
        image = layout.image.format(k=k)
        images[question_id] = _save(folder, image, scene, drawn, layout.fmt)
        questions.append(Question(question_id, image, qa))
        heldout.append(_heldout(benchmark, question_id, image, qa, prompt_for(benchmark, qa)))
        scenes.append({"image": image, "objects": scene.to_json()})
    if benchmark == "vqav2":
        files = formats.write_vqav2(folder, questions)
    elif benchmark == "textvqa":
        files = formats.write_textvqa(folder, questions)
    elif benchmark == "scienceqa":
        files = formats.write_scienceqa(folder, questions)
    else:
        files = formats.write_mmbench(folder, questions, images)
    if layout.image_dir is not None:
        files["image_dir"] = layout.image_dir
    return _Bench(files, dict(layout.options), heldout, scenes)


def _pope(folder: Path, rng: random.Random, n: int, layout: Layout) -> _Bench:
    """POPE's construction: the same images in every kind, one yes and one no question per image and
    kind; popular / adversarial negatives ranked by the statistics of these very images."""
    images = [sample_scene(rng, "test", layout=layout) for _ in range(max(1, n // 2))]
    stats = CategoryStats.of(images)
    names = [f"images/world_pope_{j:06d}.png" for j in range(len(images))]
    for name, scene in zip(names, images, strict=True):
        _save(folder, name, scene, layout)
    by_kind: dict[str, list[Question]] = {}
    prompts, heldout, question_id = {}, [], 0
    for kind in POPE_KINDS:
        by_kind[kind] = []
        for name, scene in zip(names, images, strict=True):
            pair = [pope(scene, kind, stats, rng, True), pope(scene, kind, stats, rng, False)]
            if rng.random() < 0.5:
                pair.reverse()
            for qa in pair:
                question_id += 1
                q = Question(question_id, name, qa)
                by_kind[kind].append(q)
                prompts[question_id] = prompt_for("pope", qa)
                heldout.append(_heldout("pope", question_id, name, qa, prompts[question_id]))
    files = formats.write_pope(folder, by_kind, prompts)
    scenes = [{"image": name, "objects": scene.to_json()} for name, scene in zip(names, images, strict=True)]
    return _Bench({**files, "image_dir": "images"}, {}, heldout, scenes)


def _mme(folder: Path, rng: random.Random, n: int, layout: Layout) -> _Bench:
    """Per subtask folder: images/<name>.png and questions_answers_YN/<name>.txt (a Yes and a No
    question about the same image). Reader ids are "<subtask>/<image>#1|2"."""
    root = folder / formats.MME_ROOT
    subtasks = list(MME_SUBTASKS)
    heldout, scenes = [], []
    for j in range(max(1, n // 2) * len(subtasks)):
        subtask = subtasks[j % len(subtasks)]
        family = FAMILY[f"mme_{subtask.lower()}"]
        for _ in range(MAX_TRIES):
            scene = sample_scene(rng, "test", family.shape_counts, family.letter_counts, layout=layout)
            yes, no = (MME_SUBTASKS[subtask](scene, rng, want) for want in (True, False))
            if yes is not None and no is not None:
                break
        else:
            raise RuntimeError(f"MME {subtask}: no suitable scene in {MAX_TRIES} draws")
        name = f"{j:06d}.png"
        image = f"{formats.MME_ROOT}/{subtask}/images/{name}"
        _save(folder, image, scene, layout)
        formats.write_mme_pair(root, subtask, name, yes, no)
        for k, qa in enumerate((yes, no), start=1):
            heldout.append(_heldout("mme", f"{subtask}/{name}#{k}", image, qa, prompt_for("mme", qa)))
        scenes.append({"image": image, "objects": scene.to_json()})
    return _Bench({"root": formats.MME_ROOT}, {}, heldout, scenes)


# ---- reading a world back ---------------------------------------------------------------------------


def read_manifest(world: str | Path) -> dict[str, Any]:
    path = Path(world) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no world manifest (run `adallava world generate --out {world}`)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != WORLD_FORMAT:
        raise ValueError(f"{path}: field 'format' must be {WORLD_FORMAT!r}, got {manifest.get('format')!r}")
    return manifest


def load_heldout(world: str | Path) -> list[HeldoutQuestion]:
    """Every question of a test world (heldout.jsonl), with its answer, family and benchmark."""
    world = Path(world)
    manifest = read_manifest(world)
    if manifest["split"] != "test":
        raise ValueError(f"{world}: a {manifest['split']} world has no held-out questions")
    rows = []
    for line in (world / manifest["heldout"]).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows.append(
            HeldoutQuestion(
                question_id=row["question_id"],
                image=world / row["image"],
                prompt=row["text"],
                answer=row["answer"],
                family=row["category"],
                benchmark=row["benchmark"],
                benchmark_question_id=row["benchmark_question_id"],
            )
        )
    return rows


def world_scenes(world: str | Path) -> list[Scene]:
    """The scenes of a world (from scenes.jsonl), jitter left out."""
    world = Path(world)
    manifest = read_manifest(world)
    lines = (world / manifest["scenes"]).read_text(encoding="utf-8").splitlines()
    return [scene_from_json(json.loads(line)["objects"]) for line in lines]


def shared_layouts(train: str | Path, test: str | Path) -> set[str]:
    """Scene layouts that occur in both worlds: empty when train and test are disjoint."""
    return {s.key() for s in world_scenes(train)} & {s.key() for s in world_scenes(test)}
