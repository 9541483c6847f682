"""`adallava convert`: turn an official AdaLLaVA checkpoint (original LLaVA repository format) into an
adallava checkpoint (a HF Llava folder plus the adaptive files), ready for `AdaLlava.from_pretrained`.

    adallava convert --from-official /path/to/ada-llava-L-v1.5-7b \\
        --vision-tower /path/to/clip-vit-large-patch14-336 --out /path/to/ada-llava-L-7b-hf

See docs/checkpoints.md for what is mapped and why.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adallava.engine.switches import switch_kind
from adallava.io.checkpoint import DTYPES
from adallava.io.convert_official import convert_official


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an official AdaLLaVA checkpoint to the adallava format",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from-official",
        required=True,
        type=Path,
        metavar="DIR",
        help="official checkpoint folder: config.json (model_type ada_llava_llama), weights "
        "(model*.safetensors or pytorch_model*.bin), tokenizer files",
    )
    parser.add_argument(
        "--vision-tower",
        required=True,
        type=Path,
        metavar="DIR",
        help="Hugging Face CLIP folder named by the checkpoint's mm_vision_tower "
        "(e.g. a local copy of openai/clip-vit-large-patch14-336)",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="new folder to write")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *sorted(DTYPES)],
        help="dtype of the Llava weights; auto = the checkpoint's torch_dtype (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the new <image>/<pad> embedding rows (default: 0)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = convert_official(args.from_official, args.vision_tower, args.out, args.dtype, args.seed)
    adaptive = report.adaptive
    kind = switch_kind(adaptive.switches).describe(adaptive)
    print(f"wrote {report.out_dir}")
    print(f"  {kind}; P = {adaptive.num_prefix_layers} of N = {report.num_layers} layers always run")
    print(f"  selection: {adaptive.selection}; token selection: {adaptive.token_selection}")
    print(
        f"  vocabulary {report.vocab_size} -> {report.padded_vocab_size} rows: <image> = "
        f"{report.image_token_id}, <pad> = {report.pad_token_id}"
    )
    print(f"  dtype: {report.dtype}; vision tower weights from {report.vision_weights}")
    print(f"  chat template: {report.chat_template}")
    print(f"load with: AdaLlava.from_pretrained({str(report.out_dir)!r})")
    return 0
