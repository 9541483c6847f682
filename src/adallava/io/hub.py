"""Models by name or by path: the bundled tiny checkpoints, and loading any model folder.

The bundled models live in `adallava/bundled/<name>/` (HF folders with processor files, each under
10 MB, safetensors). `resolve_model` (from `adallava.engine.folders`, the one resolver) accepts a
bundled name wherever a model path is accepted; nothing here goes to the Hugging Face Hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from adallava.engine.folders import BUNDLED, BUNDLED_DIR, DEFAULT_MODEL, resolve_model

__all__ = [
    "BUNDLED", "BUNDLED_DIR", "CARD_FILE", "DEFAULT_MODEL", "ModelInfo", "bundled_models", "check_device",
    "load_model", "resolve_model", "resolve_processor",
]  # fmt: skip
CARD_FILE = "card.json"  # metadata written by the build: accuracy, build command, time
# A folder AutoProcessor can load a Llava processor from offline: a tokenizer and an image processor.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


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


def resolve_processor(model_dir: str | Path, processor: str | Path | None = None) -> Path:
    """The folder the processor loads from: `processor` (a folder or a bundled name) or else the model
    folder. A folder without tokenizer and image-processor files (e.g. one written by
    `model.save_pretrained` alone) is refused with what to do. Raises FileNotFoundError."""
    if processor is not None and str(processor) in BUNDLED and not Path(processor).is_dir():
        return resolve_model(processor, flag="--processor")
    folder = Path(model_dir if processor is None else processor).expanduser()
    if processor is not None and not folder.is_dir():
        names = ", ".join(BUNDLED)
        raise FileNotFoundError(
            f"--processor {str(processor)!r} is neither a folder nor a bundled model name ({names})"
        )
    if not (_has_any(folder, TOKENIZER_FILES) and _has_any(folder, IMAGE_PROCESSOR_FILES)):
        where = "--processor folder" if processor is not None else "model folder"
        raise FileNotFoundError(
            f"{where} {str(folder)!r} has no processor files (a tokenizer such as {TOKENIZER_FILES[0]} and "
            f"an image processor, {' or '.join(IMAGE_PROCESSOR_FILES)}): save the processor next to the "
            f"model (`processor.save_pretrained({str(folder)!r})`), or pass --processor DIR (processor=DIR "
            "in Python), a folder or bundled name holding the model's processor"
        )
    return folder


def _has_any(folder: Path, names) -> bool:
    return any((folder / name).is_file() for name in names)


def check_device(device) -> None:
    """Refuse a device this torch cannot use, with what to do (before any model is loaded): a CUDA
    device on a CPU-only torch or one that sees no GPU, or a GPU index past the last one."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "is a CPU-only build" if torch.version.cuda is None else "sees no CUDA device"
            raise ValueError(
                f"--device {device!r}: this torch ({torch.__version__}) {why}, so CUDA cannot be used; "
                "use --device cpu, or install a CUDA build of torch on a machine with a GPU"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"--device {device!r}: only {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device!r}: MPS is not available here; use --device cpu")


def load_model(name_or_path: str | Path | None = None, processor: str | Path | None = None, device=None,
               **kwargs):  # fmt: skip
    """(model, processor) from a folder or a bundled name; the processor from the model folder or from
    `processor` (a folder or a bundled name); on `device` when given. Adaptive folders load as AdaLlava;
    a plain HF Llava folder loads wrapped with AdaLlava.from_base (its scheduler untrained: budget=None
    runs it unchanged). Every check (folders, processor files, device) comes before any loading."""
    path = resolve_model(name_or_path)
    processor_dir = resolve_processor(path, processor)
    if device is not None:
        check_device(device)
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from adallava.engine.llava import ADAPTIVE_CONFIG_FILE, AdaLlava

    if (path / ADAPTIVE_CONFIG_FILE).is_file():
        model = AdaLlava.from_pretrained(path, **kwargs)
    else:
        model = AdaLlava.from_base(LlavaForConditionalGeneration.from_pretrained(path, **kwargs))
    if device is not None:
        model = model.to(device)
    return model.eval(), AutoProcessor.from_pretrained(processor_dir)
