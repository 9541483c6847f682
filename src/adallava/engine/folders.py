"""Model folders: a path, or the name of a model bundled with the package, becomes a folder.

The one resolver behind every place that takes a model (`AdaLlava.from_pretrained`, `load_model`,
`adallava ask / serve / eval / plot / init / train`). It lives in the engine, the lowest layer that
needs it (`from_pretrained`), and `adallava.io.hub` re-exports it with the bundled models' metadata.
Nothing here touches the network: a name that is neither a folder nor a bundled name is refused at
once, never looked up on the Hugging Face Hub.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "bundled"  # src/adallava/bundled
BUNDLED = {
    "tiny-llava": "the base tiny LLaVA trained from scratch on the synthetic world",
    "tiny-adallava-l": "AdaLLaVA-L (layer switches) fine-tuned from tiny-llava; the default",
    "tiny-adallava-h": "AdaLLaVA-H (head and MLP-group switches) fine-tuned from tiny-llava",
    "tiny-adallava-l-prumerge": "AdaLLaVA-L fine-tuned with PruMerge+ token selection on (paper Table 3)",
}
DEFAULT_MODEL = "tiny-adallava-l"


def resolve_model(name_or_path, flag: str = "model") -> Path:
    """A model folder (one with config.json) from a path or a bundled name (None: the default bundled
    model). `flag` names the argument in errors (e.g. '--base'). Raises FileNotFoundError."""
    name_or_path = DEFAULT_MODEL if name_or_path is None else name_or_path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{flag} {str(path)!r}: the folder has no config.json (not a model)")
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
        f"{flag} {str(name_or_path)!r} is neither a folder nor a bundled model name ({', '.join(BUNDLED)}); "
        "models are loaded from local folders only (download a Hub model first, e.g. with "
        "`huggingface-cli download`)"
    )
