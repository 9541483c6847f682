"""Checkpoint folder conventions shared by conversion and initialisation."""

from __future__ import annotations

from pathlib import Path

import torch

from adallava.engine.llava import ADAPTIVE_CONFIG_FILE

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt",
)  # fmt: skip
# What `adallava init` copies from a HF Llava folder so that the output loads offline with AutoProcessor.
PROCESSOR_FILES = (
    *TOKENIZER_FILES, "preprocessor_config.json", "processor_config.json", "chat_template.json",
    "chat_template.jinja",
)  # fmt: skip


def check_out_dir(out_dir: Path, inputs: list[Path]) -> None:
    for source in inputs:
        if source.exists() and out_dir.resolve() == source.resolve():
            raise ValueError(f"--out {out_dir} is an input folder; write the result to a new folder")
    if (out_dir / "config.json").exists() or (out_dir / ADAPTIVE_CONFIG_FILE).exists():
        raise ValueError(f"--out {out_dir} already holds a checkpoint; choose a new or empty folder")
