"""`adallava init`: make any HF Llava folder (or bundled base model) adaptive (scheduler and latency
encoder freshly initialised, seeded) and save it with the base folder's processor files. The output
says "scheduler_trained": false until `adallava train` trains it: budgets are refused until then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import (
    LlavaForConditionalGeneration,
)

from adallava.core.config import AdaptiveConfig
from adallava.engine.folders import resolve_model
from adallava.engine.llava import AdaLlava
from adallava.io.checkpoint import DTYPES, PROCESSOR_FILES, check_out_dir
from adallava.io.official_format import OFFICIAL_MODEL_TYPE


def init_from_base(
    base_dir: str | Path,
    out_dir: str | Path,
    adaptive: AdaptiveConfig,
    dtype: str = "auto",
    seed: int = 0,
) -> AdaLlava:
    """Make any HF Llava folder adaptive: a freshly initialised scheduler and latency encoder (seeded),
    saved with the base weights and the base folder's tokenizer / processor / chat template files, so the
    output loads offline with `AdaLlava.from_pretrained` and `AutoProcessor.from_pretrained`.
    `base_dir`: a folder or a bundled model's name (e.g. 'tiny-llava')."""
    base_dir, out_dir = resolve_model(base_dir, flag="--base"), Path(out_dir)
    config_file = base_dir / "config.json"
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type == OFFICIAL_MODEL_TYPE:
        raise ValueError(
            f"{base_dir} is an official AdaLLaVA checkpoint; use `adallava convert --from-official`"
        )
    if model_type != "llava":
        raise ValueError(
            f"{config_file}: model_type {model_type!r}; --base must be a HF Llava folder ('llava')"
        )
    check_out_dir(out_dir, [base_dir])
    torch_dtype = "auto" if dtype == "auto" else DTYPES[dtype]
    base = LlavaForConditionalGeneration.from_pretrained(base_dir, dtype=torch_dtype)
    torch.manual_seed(seed)
    model = AdaLlava.from_base(base, adaptive)
    model.scheduler_trained = False  # as from_base leaves it; said here because budgets depend on it
    model.save_pretrained(out_dir)
    for name in PROCESSOR_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)
    templates = base_dir / "additional_chat_templates"
    if templates.is_dir():
        shutil.copytree(templates, out_dir / templates.name, dirs_exist_ok=True)
    return model
