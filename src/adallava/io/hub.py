"""Models by name or by path: the bundled tiny checkpoints, and loading any model folder.

The bundled models live in `adallava/bundled/<name>/` (HF folders with processor files, each under
10 MB, safetensors). `resolve_model` accepts a bundled name wherever a model path is accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "bundled"  # src/adallava/bundled
BUNDLED = {
    "tiny-llava": "the base tiny LLaVA trained from scratch on the synthetic world",
    "tiny-adallava-l": "AdaLLaVA-L (layer switches) fine-tuned from tiny-llava; the default",
    "tiny-adallava-h": "AdaLLaVA-H (head and MLP-group switches) fine-tuned from tiny-llava",
}
DEFAULT_MODEL = "tiny-adallava-l"
CARD_FILE = "card.json"  # metadata written by the build: accuracy, build command, time


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    description: str
    available: bool
    card: dict


def bundled_models() -> list[ModelInfo]:
    """The bundled models, whether or not their files are present in this installation."""
    infos = []
    for name, description in BUNDLED.items():
        path = BUNDLED_DIR / name
        card_file = path / CARD_FILE
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        infos.append(ModelInfo(name, path, description, (path / "config.json").is_file(), card))
    return infos


def resolve_model(name_or_path: str | Path | None) -> Path:
    """A model folder from a path or a bundled name (None: the default bundled model)."""
    name_or_path = DEFAULT_MODEL if name_or_path is None else name_or_path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {str(path)!r} has no config.json")
        return path
    if str(name_or_path) in BUNDLED:
        bundled = BUNDLED_DIR / str(name_or_path)
        if not (bundled / "config.json").is_file():
            raise FileNotFoundError(
                f"bundled model {name_or_path!r} is not built in this installation; build the bundled models "
                "with `bash scripts/build_bundled.sh` (docs/training.md)"
            )
        return bundled
    raise FileNotFoundError(
        f"model {str(name_or_path)!r} is neither a folder nor a bundled model name ({', '.join(BUNDLED)})"
    )


def load_model(name_or_path: str | Path | None = None, **kwargs):
    """(model, processor) from a folder or a bundled name. Adaptive folders load as AdaLlava; a plain
    HF Llava folder loads wrapped with AdaLlava.from_base (budget=None then runs it unchanged)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from adallava.engine.llava import ADAPTIVE_CONFIG_FILE, AdaLlava

    path = resolve_model(name_or_path)
    if (path / ADAPTIVE_CONFIG_FILE).is_file():
        model = AdaLlava.from_pretrained(path, **kwargs)
    else:
        model = AdaLlava.from_base(LlavaForConditionalGeneration.from_pretrained(path, **kwargs))
    processor = AutoProcessor.from_pretrained(path)
    return model.eval(), processor
