"""Ask an `adallava serve` server through the official `openai` package, with a budget per request.

    adallava serve &                      # tiny-adallava-l on http://127.0.0.1:8000
    python examples/openai_client.py --image examples/scene.png --question "what color is the circle ?" \
        --budget 0.6
    python examples/openai_client.py --image examples/scene.png --question "how many shapes ?" --stream

The image travels inline as a data URL (the server never fetches URLs); the budget goes in
`extra_body`, and what ran comes back in the response's `adallava` field.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
from pathlib import Path

from openai import OpenAI


def image_data_url(path: Path) -> str:
    """A file as a `data:` URL, the way images go to an OpenAI-style chat API."""
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def messages(image: Path, question: str) -> list[dict]:
    content = [
        {"type": "image_url", "image_url": {"url": image_data_url(image)}},
        {"type": "text", "text": question},
    ]
    return [{"role": "user", "content": content}]


def ask(client: OpenAI, model: str, image: Path, question: str, budget, max_tokens: int = 16) -> dict:
    """One answer and adallava's report of what ran: {answer, finish_reason, adallava}."""
    response = client.chat.completions.create(
        model=model,
        messages=messages(image, question),
        max_tokens=max_tokens,
        extra_body={"budget": budget},  # a fraction in [b_min, 1], or a FLOPs cap such as "40M"
    )
    choice = response.choices[0]
    return {
        "answer": choice.message.content,
        "finish_reason": choice.finish_reason,
        "adallava": response.model_extra["adallava"],
    }


def ask_streaming(
    client: OpenAI, model: str, image: Path, question: str, budget, max_tokens: int = 16
) -> dict:
    """The same, streamed: text pieces as they are generated; the last chunk carries the report."""
    stream = client.chat.completions.create(
        model=model,
        messages=messages(image, question),
        max_tokens=max_tokens,
        stream=True,
        extra_body={"budget": budget},
    )
    pieces, report, finish_reason = [], None, None
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            pieces.append(delta)
            print(delta, end="", flush=True)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish_reason = chunk.choices[0].finish_reason
            report = chunk.model_extra["adallava"]
    print()
    return {"answer": "".join(pieces), "finish_reason": finish_reason, "adallava": report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="model id (default: the one the server serves)")
    parser.add_argument("--image", type=Path, default=Path(__file__).with_name("scene.png"))
    parser.add_argument("--question", default="what color is the circle ?")
    parser.add_argument("--budget", default="0.6", help="a fraction such as 0.6 or a FLOPs cap such as 40M")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        budget = float(args.budget)
    except ValueError:
        budget = args.budget  # a FLOPs string; the server checks it

    client = OpenAI(base_url=args.base_url, api_key="none")  # the server needs no key
    model = args.model or client.models.list().data[0].id
    run = ask_streaming if args.stream else ask
    result = run(client, model, args.image, args.question, budget, args.max_tokens)
    if args.json:
        print(json.dumps(result))
        return 0
    report = result["adallava"]
    plan = report["plan"]
    strip = "".join("█" if i in plan["layers"] else "·" for i in range(plan["num_layers"]))
    llm, full = report["prefill_flops"]["llm"], report["full_prefill_flops"]["llm"]
    print(f"answer: {result['answer']}  ({result['finish_reason']})")
    print(f"budget: {report['budget']}   layers run: {strip}")
    print(f"prefill FLOPs (LLM): {llm / 1e6:.1f}M of {full / 1e6:.1f}M   "
          f"time: prefill {report['prefill_ms']:.0f} ms, decode {report['decode_ms']:.0f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
