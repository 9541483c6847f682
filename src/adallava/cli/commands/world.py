"""`adallava world`: the synthetic world (docs/world.md).

adallava world generate --out world/train --split train --seed 0 --n 40000
adallava world generate --out world/test --split test --seed 0 --n 100
adallava world check --train world/train --test world/test
adallava world build-model --world world/train --out models/tiny-llava-init
adallava world export --format lmms-eval --out lmms-world        # docs/lmms-eval.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adallava.data.world.scene import DEFAULT_LAYOUT, LAYOUTS, SPLITS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "world",
        help="generate the synthetic world, check its splits, build a tiny LLaVA for it",
        description="The synthetic world: seeded images of shapes and letter cards, questions in the "
        "families of the paper's benchmarks, LLaVA training JSON and official benchmark files.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    sub = actions.add_parser(
        "generate",
        help="write one split (train: LLaVA JSON + images; test: every benchmark in its official format)",
        description="Write one split of the world and its manifest.json. The same seed, n and split give "
        "byte-identical files; train and test never share a scene layout.",
    )
    sub.add_argument("--out", type=Path, required=True, help="an empty or new folder")
    sub.add_argument("--split", choices=SPLITS, default="train", help="train or test (default: train)")
    sub.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default: 0)")
    sub.add_argument(
        "--n",
        type=int,
        default=None,
        help="training samples (train, default 40000) or questions per family (test, default 100)",
    )
    sub.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        default=DEFAULT_LAYOUT,
        help="v2: 48 px images, 9 visual tokens; v3: 96 px, each cell 2 x 2 patches, 36 visual tokens "
        f"(default: {DEFAULT_LAYOUT})",
    )
    sub.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.set_defaults(func=_generate)

    sub = actions.add_parser(
        "check",
        help="check that a test world shares no scene layout with a training world",
        description="Compare the scene layouts (objects, colours, cells, sizes, letters) of two worlds.",
    )
    sub.add_argument("--train", type=Path, required=True, help="a world generated with --split train")
    sub.add_argument("--test", type=Path, required=True, help="a world generated with --split test")
    sub.set_defaults(func=_check)

    sub = actions.add_parser(
        "build-model",
        help="write a randomly initialised tiny LLaVA (tokenizer, processor, chat template, weights)",
        description="A Hugging Face folder that AutoProcessor and LlavaForConditionalGeneration load "
        "offline: word-level tokenizer over the world's vocabulary, CLIP 2x128 tower, Llama 8x128.",
    )
    sub.add_argument("--out", type=Path, required=True, help="output folder")
    sub.add_argument(
        "--world",
        type=Path,
        default=None,
        help="a generated world: its image size is used and its words checked",
    )
    sub.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: 0)")
    sub.add_argument("--layers", type=int, default=16, help="decoder layers of the text model (default: 16)")
    sub.add_argument("--hidden", type=int, default=96, help="the text model's hidden size (default: 96)")
    sub.add_argument("--intermediate", type=int, default=256, help="the text model's MLP size (default: 256)")
    sub.add_argument("--heads", type=int, default=4, help="the text model's attention heads (default: 4)")
    sub.set_defaults(func=_build_model)

    sub = actions.add_parser(
        "export",
        help="write a test world as local lmms-eval tasks (pip install 'adallava[lmms]')",
        description="The six benchmarks of a test world as lmms-eval tasks (adallava_world_pope, ..._mme, "
        "..._scienceqa_img, ..._textvqa_val, ..._vqav2_val, ..._mmbench_en_dev; tag adallava_world): parquet "
        "datasets in the columns of lmms-eval's own datasets, and YAMLs that include lmms-eval's own task "
        "configs. Run them with `lmms-eval --include_path OUT`, offline. See docs/lmms-eval.md.",
    )
    sub.add_argument("--format", choices=["lmms-eval"], required=True, help="lmms-eval (the only format)")
    sub.add_argument("--out", type=Path, required=True, help="output folder (give it to --include_path)")
    sub.add_argument(
        "--world",
        type=Path,
        default=None,
        help="a test world (adallava world generate --split test); default: generate one into OUT/world "
        "with --seed and --n",
    )
    sub.add_argument("--seed", type=int, default=0, help="seed of the generated test world (default: 0)")
    sub.add_argument(
        "--n", type=int, default=100, help="questions per family of the generated world (default: 100)"
    )
    sub.add_argument(
        "--benchmarks",
        default=None,
        help="comma-separated benchmarks: pope, mme, scienceqa, textvqa, vqav2, mmbench (default: all)",
    )
    sub.set_defaults(func=_export)


def _generate(args: argparse.Namespace) -> int:
    from adallava.data.world.generate import generate_world

    n = args.n if args.n is not None else (40_000 if args.split == "train" else 100)
    start = time.perf_counter()
    manifest = generate_world(
        args.out, split=args.split, seed=args.seed, n=n, progress=not args.no_progress, layout=args.layout
    )
    seconds = time.perf_counter() - start
    if args.split == "train":
        print(f"wrote {n} training samples to {args.out / manifest['conversations']} in {seconds:.1f} s")
    else:
        total = sum(entry["questions"] for entry in manifest["benchmarks"].values())
        benchmarks = len(manifest["benchmarks"])
        print(f"wrote {total} questions in {benchmarks} benchmarks to {args.out} in {seconds:.1f} s")
    print(json.dumps(manifest["families"]))
    return 0


def _check(args: argparse.Namespace) -> int:
    from adallava.data.world.generate import read_manifest, shared_layouts

    for path, split in ((args.train, "train"), (args.test, "test")):
        if read_manifest(path)["split"] != split:
            raise ValueError(f"--{split} {path}: is not a {split} world")
    shared = shared_layouts(args.train, args.test)
    if shared:
        print(f"{len(shared)} scene layouts occur in both worlds, e.g. {sorted(shared)[0]}")
        return 1
    print("disjoint: no scene layout of the test world occurs in the training world")
    return 0


def _build_model(args: argparse.Namespace) -> int:
    from adallava.data.tiny_model import TinyLlavaSpec, build_tiny_llava

    spec = TinyLlavaSpec(
        text_layers=args.layers,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_heads=args.heads,
    )
    out = build_tiny_llava(args.out, world=args.world, spec=spec, seed=args.seed)
    print(f"wrote a random-init tiny LLaVA to {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from adallava.integrations.lmms.export import export_world, lmms_tasks_dir

    lmms_tasks_dir()  # lmms-eval is installed: checked before generating anything
    world = args.world
    if world is None:
        from adallava.data.world.generate import generate_world

        world = args.out / "world"
        generate_world(world, split="test", seed=args.seed, n=args.n, progress=False)
        print(f"generated a test world (seed {args.seed}, n {args.n}) in {world}")
    benchmarks = [name.strip() for name in args.benchmarks.split(",")] if args.benchmarks else None
    manifest = export_world(world, args.out, benchmarks)
    for name, entry in manifest["tasks"].items():
        print(f"{name}: {entry['rows']} rows ({entry['data']}; lmms-eval config {entry['lmms_config']})")
    print(f"run: lmms-eval --model adallava --include_path {args.out} --tasks {manifest['tag']} ...")
    return 0
