"""The converted checkpoint's tokenizer and processor: the official tokenizer with `<image>` and
`<pad>` added, LLaVA-1.5's image preprocessing and its `vicuna_v1` chat template, as one HF
LlavaProcessor that `AutoProcessor.from_pretrained` loads offline."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers import AddedToken, AutoTokenizer, CLIPVisionConfig, LlavaProcessor

from adallava.engine import hf_compat
from adallava.io.checkpoint import TOKENIZER_FILES

# LLaVA-1.5's `vicuna_v1` conversation (llava/conversation.py: system prompt, "USER"/"ASSISTANT", sep
# " ", sep2 "</s>", the image first in the user's message). Official checkpoints ship no chat template;
# with this one `apply_chat_template` gives the prompt the authors evaluated with. It writes no BOS:
# the processor adds it when tokenizing the text.
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_V1_CHAT_TEMPLATE = (
    "{%- set system = '" + VICUNA_V1_SYSTEM.replace("'", "\\'") + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] -%}"
    "{%- else -%}{%- set system = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('\\n') -%}{%- endif -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- system + ' ' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'image') -%}{{- '<image>\\n' -}}"
    "{%- endfor -%}"
    "{{- message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n') -}}"
    "{%- endif -%}{{- ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{{- message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n') -}}"
    "{%- endif -%}{{- '</s>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def load_official_tokenizer(directory: Path):
    """The checkpoint's tokenizer, loaded from a copy of its tokenizer files only (its config.json
    names a model type transformers does not know)."""
    present = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not any(name in present for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise FileNotFoundError(
            f"{directory} holds no tokenizer (tokenizer.model or tokenizer.json); copy the base LLM's "
            "tokenizer files (e.g. lmsys/vicuna-7b-v1.5) into it"
        )
    with tempfile.TemporaryDirectory() as scratch:
        for name in present:
            shutil.copy2(directory / name, Path(scratch) / name)
        try:
            return AutoTokenizer.from_pretrained(scratch)
        except (ImportError, OSError, ValueError) as error:
            hint = (
                " Reading tokenizer.model needs `pip install sentencepiece protobuf`."
                if "tokenizer.model" in present and "tokenizer.json" not in present
                else ""
            )
            raise ValueError(f"cannot load the tokenizer in {directory}: {error}.{hint}") from error


def add_image_and_pad_tokens(tokenizer, vocab: int) -> tuple[int, int]:
    """Append `<image>` (id V) and `<pad>` (id V+1) to a tokenizer of V tokens, as transformers' LLaVA
    conversion does (the LLaVA repo marks the image with the index -200 instead of a token); return
    their ids."""
    if len(tokenizer) != vocab:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but config.json's vocab_size is {vocab}; the "
            "conversion appends <image> and <pad> after the vocabulary and needs them to match"
        )
    tokenizer.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    image_token_id, pad_token_id = tokenizer.convert_tokens_to_ids(["<image>", "<pad>"])
    if (image_token_id, pad_token_id) != (vocab, vocab + 1):
        raise ValueError(
            f"the tokenizer gave <image> id {image_token_id} and <pad> id {pad_token_id}; expected {vocab} "
            f"and {vocab + 1} (does it already define them?)"
        )
    return image_token_id, pad_token_id


def build_image_processor(vision_dir: Path, vision_config: CLIPVisionConfig, pad_to_square: bool):
    """LLaVA-1.5's preprocessing as a HF image processor: the tower's CLIP settings
    (preprocessor_config.json when present) and, for image_aspect_ratio 'pad', padding to a square with
    the mean colour first (LlavaImageProcessor's do_pad is LLaVA's expand2square)."""
    path = vision_dir / "preprocessor_config.json"
    size = vision_config.image_size
    settings: dict[str, Any] = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
    if path.is_file():
        settings = json.loads(path.read_text())
        for key in ("image_processor_type", "feature_extractor_type", "processor_class", "do_pad"):
            settings.pop(key, None)
    return hf_compat.llava_image_processor_class()(**settings, do_pad=pad_to_square)


def build_processor(
    tokenizer, vision_dir: Path, vision_config: CLIPVisionConfig, config: dict[str, Any], strategy: str
) -> LlavaProcessor:
    """The converted checkpoint's processor: `tokenizer` (with `<image>` and `<pad>`), LLaVA-1.5's image
    preprocessing for the official `config`, and the tokenizer's chat template or, lacking one,
    `vicuna_v1`'s."""
    return LlavaProcessor(
        image_processor=build_image_processor(
            vision_dir, vision_config, config.get("image_aspect_ratio", "pad") == "pad"
        ),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=getattr(tokenizer, "chat_template", None) or VICUNA_V1_CHAT_TEMPLATE,
    )
