"""`adallava ask`: answer a question about an image under a budget, and show what ran.

adallava ask --image cat.png --question "What color is the cat?" --budget 0.6
adallava ask --image scene.png --question "How many circles are there?" --model tiny-adallava-h --json
adallava ask --image scene.png --question "What shape is red?" --model tiny-llava   # a base model: no budget
adallava ask --image scene.png --question "What color is the circle?" --budget 30ms  # a deadline

Without --budget a model with a trained scheduler runs at 1.0, and one without (a base model, or the
output of `adallava init`) runs as the full model; a budget on the latter is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from adallava.core.budget import parse_budget
from adallava.inference.answering import ask, check_scheduler_trained
from adallava.io.hub import BUNDLED, DEFAULT_MODEL, load_model


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ask",
        help="answer a question about an image under a budget",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--image", required=True, type=Path, help="a PNG/JPEG (any format PIL reads)")
    parser.add_argument("--question", required=True, help="the question, in words")
    parser.add_argument(
        "--budget",
        default=None,
        help="fraction of the full decoder-stack FLOPs in [b_min, 1] (b_min = prefix share, 0.5 by default), "
        "an absolute cap such as '2M', or a deadline such as '30ms' / '0.03s' (the answer planned to be "
        "complete in time; see docs/deadlines.md) (default: 1.0 with a trained scheduler, else none: the "
        "full model)",
    )
    parser.add_argument(
        "--best-effort",
        action="store_true",
        help="with a deadline even the smallest plan cannot meet, run the smallest plan instead of failing",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"folder or bundled name ({', '.join(BUNDLED)}; default %(default)s)",
    )
    parser.add_argument(
        "--processor", metavar="DIR", help="folder or bundled name holding the processor (default: --model)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"--image {str(path)!r}: no such file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"--image {str(path)!r} is not an image PIL can read ({error})") from None


def run(args) -> int:
    image = open_image(args.image)
    budget = None if args.budget is None else parse_budget(args.budget)  # checked before loading
    model, processor = load_model(args.model, processor=args.processor)
    if budget is None:
        budget = 1.0 if model.scheduler_trained else None
    else:
        check_scheduler_trained(model, str(args.model))
    result = ask(model, processor, image, args.question, budget, args.max_new_tokens, args.best_effort)
    if args.json:
        print(json.dumps(result))
    else:
        print_summary(result)
    return 0


def print_summary(result: dict) -> None:
    """The answer, the layers that ran, FLOPs, time and any words the tokenizer did not know."""
    layers, n = result["plan"]["layers"], result["plan"]["num_layers"]
    strip = "".join("█" if i in layers else "·" for i in range(n))
    llm, full = result["flops"]["llm"], result["full_flops"]["llm"]
    budget = "none (the full model)" if result["budget"] is None else result["budget"]
    print(f"answer: {result['answer']}")
    print(f"budget: {budget}   layers run: {strip} ({len(layers)}/{n})")
    print(f"prefill FLOPs: LLM {llm / 1e6:.2f}M of {full / 1e6:.2f}M ({llm / full:.3f}), total "
          f"{result['flops']['total'] / 1e6:.2f}M of {result['full_flops']['total'] / 1e6:.2f}M")  # fmt: skip
    print(f"time: {result['ms']:.1f} ms (prefill {result['prefill_ms']:.1f} ms, decode "
          f"{result['decode_ms']:.1f} ms, {result['completion_tokens']} new tokens)")  # fmt: skip
    deadline = result.get("deadline")
    if deadline is not None:
        verdict = "met" if deadline["met"] else "MISSED"
        print(f"deadline: {deadline['deadline_ms']:g} ms, predicted {deadline['predicted_ms']:.1f} ms, "
              f"measured {deadline['measured_ms']:.1f} ms: {verdict} (budget {deadline['fraction']:.3g}, "
              f"slowdown {deadline['slowdown']:.2f})")  # fmt: skip
    if result["unknown_words"]:
        print(f"unknown words: {', '.join(result['unknown_words'])} (not in the model's vocabulary: it read "
              "them as its unknown token; rephrase with words it knows)")  # fmt: skip
