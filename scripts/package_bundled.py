"""Copy trained model folders into adallava/bundled/<name> (what the package ships) with a card.

    python scripts/package_bundled.py --report runs/report/world_report.json \
        tiny-llava=runs/tiny-llava tiny-adallava-l=runs/tiny-adallava-l tiny-adallava-h=runs/tiny-adallava-h \
        tiny-adallava-l-prumerge=runs/tiny-adallava-l-prumerge
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from adallava.io.hub import BUNDLED, BUNDLED_DIR, CARD_FILE

KEEP = {
    "config.json", "generation_config.json", "model.safetensors", "adaptive_config.json",
    "adaptive.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "chat_template.jinja", "chat_template.json", "processor_config.json", "preprocessor_config.json",
}  # fmt: skip
LIMIT_BYTES = 10 * 1024 * 1024
REPORT_KEYS = {  # bundled name -> its section of scripts/world_report.py's JSON
    "tiny-llava": "base", "tiny-adallava-l": "adallava_l", "tiny-adallava-h": "adallava_h",
    "tiny-adallava-l-prumerge": "adallava_l_prumerge",
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="NAME=FOLDER pairs")
    parser.add_argument("--report", type=Path, help="world_report.json to take accuracies from")
    parser.add_argument("--build-seconds", type=float, default=None)
    args = parser.parse_args()
    report = json.loads(args.report.read_text()) if args.report else {}
    for pair in args.models:
        name, _, folder = pair.partition("=")
        if name not in BUNDLED:
            raise SystemExit(f"{name!r} is not a bundled model name ({', '.join(BUNDLED)})")
        source, target = Path(folder), BUNDLED_DIR / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for file in source.iterdir():
            if file.name in KEEP:
                shutil.copy2(file, target / file.name)
        size = sum(f.stat().st_size for f in target.glob("*.safetensors"))
        if size > LIMIT_BYTES:
            raise SystemExit(f"{name}: {size / 1e6:.1f} MB of weights, over the 10 MB limit")
        card = {
            "name": name,
            "source": str(source),
            "weights_mb": round(size / 1e6, 2),
            "split": "held-out test world",
        }
        key = REPORT_KEYS[name]
        if key == "base" and "base" in report:
            card["accuracy"] = report["base"]["full"]["accuracy"]
        elif key in report:
            card["accuracy"] = report[key]["1.0"]["adaptive"]["accuracy"]
            card["accuracy_by_budget"] = {b: row["adaptive"]["accuracy"] for b, row in report[key].items()}
        if args.build_seconds is not None:
            card["build_seconds_all_models"] = args.build_seconds
        card["rebuild"] = "bash scripts/build_bundled.sh"
        (target / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        print(f"{name}: {size / 1e6:.1f} MB -> {target}")


if __name__ == "__main__":
    main()
