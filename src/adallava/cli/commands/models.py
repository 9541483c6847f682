"""`adallava models`: the bundled models, whether they are built, and what they score."""

from __future__ import annotations

import json

from adallava.io.hub import DEFAULT_MODEL, bundled_models


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the bundled models", description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def run(args) -> int:
    infos = bundled_models()
    if args.json:
        rows = [
            {
                "name": i.name,
                "path": str(i.path),
                "available": i.available,
                "description": i.description,
                **i.card,
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2))
        return 0
    for info in infos:
        size = sum(f.stat().st_size for f in info.path.glob("*.safetensors")) / 1e6 if info.available else 0
        status = f"{size:.1f} MB" if info.available else "not built"
        default = " (default)" if info.name == DEFAULT_MODEL else ""
        print(f"{info.name:<18} {status:>10}  {info.description}{default}")
        if info.card.get("accuracy") is not None:
            accuracy, split = info.card["accuracy"], info.card.get("split", "")
            print(f"{'':<18} {'':>10}  held-out accuracy {accuracy:.1f}% ({split})")
    return 0
