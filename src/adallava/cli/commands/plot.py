"""`adallava plot`: pictures from `adallava eval` results folders, or of the latency token's attention.

    adallava plot runs/eval-l runs/eval-h --out runs/plots
    adallava plot --attention models/tiny-adallava-l --image scene.png \\
        --question "What color is the circle?" --question "How many shapes are there?" --out runs/plots

See docs/plots.md for what each picture shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="accuracy-vs-FLOPs, budget adherence and plan heatmaps from results folders; attention maps",
        description=(
            "From results folders (each with results.json, optionally plans_*.json): accuracy vs mean "
            "prefill FLOPs per benchmark (one line per method and model, the full model as a star), the "
            "budget adherence of adaptive rows, layer usage per budget and execution-plan heatmaps. With "
            "--attention: the latency token's attention over the image patches, one panel per question. "
            "Every picture is written as PNG and SVG."
        ),
    )
    parser.add_argument("results", nargs="*", type=Path, help="results folders written by `adallava eval`")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: plots/ in the first results folder)"
    )
    parser.add_argument(
        "--flops",
        choices=("llm", "total"),
        default="llm",
        help="x axis of the accuracy plots: the LLM's prefill FLOPs (the paper's Table 1 convention) or "
        "all prefill FLOPs, vision included (default: llm)",
    )
    attention = parser.add_argument_group("latency-token attention (instead of results folders)")
    attention.add_argument(
        "--attention", default=None, metavar="MODEL", help="an adallava model folder or a bundled name"
    )
    attention.add_argument("--image", type=Path, default=None, help="the image")
    attention.add_argument(
        "--question", action="append", default=None, help="a question (repeat for one panel per question)"
    )
    attention.add_argument("--budget", type=float, default=1.0, help="the budget (default: 1.0, as Fig. 4)")
    attention.add_argument(
        "--layer",
        type=int,
        default=None,
        help="the prefix layer to read (default: P-1, what the scheduler sees)",
    )
    attention.add_argument("--name", default="attention", help="output file stem (default: attention)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.attention is not None:
        if args.results:
            raise ValueError("give results folders or --attention MODEL, not both")
        return _attention(args)
    if not args.results:
        raise ValueError("give at least one results folder (or --attention MODEL --image F --question Q)")
    from adallava.report.results import load_rows, plan_files, write_plots

    out = args.out if args.out is not None else args.results[0] / "plots"
    rows = load_rows(args.results)
    if not rows:
        raise ValueError(f"{', '.join(map(str, args.results))}: no results rows")
    written = write_plots(rows, plan_files(args.results), out, flops=f"{args.flops}_flops")
    for paths in written.values():
        for path in paths:
            print(f"wrote {path} (+ .svg)")
    return 0


def _attention(args: argparse.Namespace) -> int:
    if args.image is None or not args.question:
        raise ValueError("--attention needs --image and at least one --question")
    if not args.image.is_file():
        raise FileNotFoundError(f"--image {args.image} does not exist")
    from PIL import Image
    from transformers import AutoProcessor

    from adallava.engine.llava import AdaLlava
    from adallava.inference.attention import latency_token_attention
    from adallava.io.hub import resolve_model, resolve_processor
    from adallava.report.plots import plot_latency_attention

    folder = resolve_model(args.attention, flag="--attention")
    processor_dir = resolve_processor(folder)  # checked before the model loads
    model = AdaLlava.from_pretrained(folder, attn_implementation="eager")
    processor = AutoProcessor.from_pretrained(processor_dir)
    image = Image.open(args.image).convert("RGB")
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True,
        )
        for question in args.question
    ]
    inputs = processor(images=[image] * len(prompts), text=prompts, return_tensors="pt", padding=True)
    weights = latency_token_attention(model, dict(inputs), args.budget, args.layer)  # [K, image tokens]
    out = (args.out if args.out is not None else Path(".")) / args.name
    layer = model.num_prefix - 1 if args.layer is None else args.layer
    title = f"Latency-token attention at layer {layer}, budget {args.budget:g}"
    plot_latency_attention(seen_image(image, processor), weights, out, titles=args.question, title=title)
    print(f"wrote {out}.png (+ .svg)")
    return 0


def seen_image(image, processor):
    """The image as a CLIP-style processor feeds it to the tower (short side resized, centre crop),
    so the patch grid lines up with what the model saw."""
    from PIL import Image

    crop = getattr(processor.image_processor, "crop_size", None) or {}
    height, width = crop.get("height"), crop.get("width")
    if not height or not width:
        return image
    scale = max(height / image.height, width / image.width)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BICUBIC
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))
