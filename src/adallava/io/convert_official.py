"""`adallava convert`: an official AdaLLaVA checkpoint -> an adallava checkpoint.

An official AdaLLaVA checkpoint is in the original LLaVA repository's format (`model_type:
ada_llava_llama`; DESIGN.md, "Facts about the official AdaLLaVA checkpoints"). Ours is a plain HF Llava
folder plus `adaptive_config.json` and `adaptive.safetensors` (see `AdaLlava.save_pretrained`).

`convert_official` runs the steps in order; what each step knows about the official format lives in
`official_format` (config), `official_weights` (keys, scheduler, vocabulary) and `official_processor`
(tokenizer, image processor, chat template), all tested on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration

from adallava.core.config import AdaptiveConfig
from adallava.engine.llava import AdaLlava
from adallava.io.checkpoint import DTYPES, check_out_dir
from adallava.io.official_format import (
    adaptive_config_from_official,
    llava_config_from_official,
    padded_vocab_size,
    read_official_config,
    read_vision_config,
)
from adallava.io.official_processor import add_image_and_pad_tokens, build_processor, load_official_tokenizer
from adallava.io.official_weights import (
    check_adaptive_shapes,
    extend_vocabulary,
    listing,
    map_official_state_dict,
    map_vision_tower_state_dict,
    official_key_for,
)
from adallava.io.weight_files import load_weights

EMBED_KEY, HEAD_KEY = "model.language_model.embed_tokens.weight", "lm_head.weight"


@dataclass(frozen=True)
class ConversionReport:
    """What `convert_official` wrote."""

    out_dir: Path
    adaptive: AdaptiveConfig
    num_layers: int
    vocab_size: int
    """Rows of the official embedding matrix (V)."""
    padded_vocab_size: int
    """Rows after adding <image> (id V) and <pad> (id V+1) and padding to a multiple of 64."""
    image_token_id: int
    pad_token_id: int
    dtype: str
    vision_weights: str
    """Where the vision tower weights came from."""
    chat_template: str
    """'tokenizer' (the checkpoint's own) or 'vicuna_v1' (LLaVA-1.5's conversation, added here)."""


def convert_official(
    official_dir: str | Path,
    vision_tower_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "auto",
    seed: int = 0,
) -> ConversionReport:
    """Convert an official AdaLLaVA checkpoint (LLaVA-repo format) into an adallava checkpoint.

    official_dir: config.json (model_type ada_llava_llama), weights (safetensors or .bin shards),
    tokenizer files. vision_tower_dir: a HF CLIP folder (config.json, weights, preprocessor_config.json).
    dtype: 'auto' (the checkpoint's torch_dtype) or float32 / float16 / bfloat16 for the HF Llava weights
    (the scheduler stays float32). seed: for the new vocabulary rows."""
    official_dir, vision_dir, out_dir = Path(official_dir), Path(vision_tower_dir), Path(out_dir)
    check_out_dir(out_dir, [official_dir, vision_dir])
    config = read_official_config(official_dir)
    vision_config = read_vision_config(vision_dir)
    vocab = config["vocab_size"]

    llava_state, adaptive_state = map_official_state_dict(load_weights(official_dir, "official checkpoint"))
    adaptive = adaptive_config_from_official(config, check_adaptive_shapes(config, adaptive_state))
    vision_weights = _add_vision_tower(llava_state, official_dir, vision_dir)
    tokenizer = load_official_tokenizer(official_dir)
    image_token_id, pad_token_id = add_image_and_pad_tokens(tokenizer, vocab)

    target = _target_dtype(dtype, config, llava_state)
    padded = padded_vocab_size(vocab)
    _grow_vocabulary(llava_state, config, padded, seed)
    llava_state = {key: _cast(tensor, target) for key, tensor in llava_state.items()}
    llava_config = llava_config_from_official(config, vision_config, padded, image_token_id, pad_token_id)
    llava_config.dtype = target
    llava = build_llava(llava_config, llava_state)
    _set_generation_config(llava, official_dir, pad_token_id)
    _save_adaptive(llava, adaptive, adaptive_state, out_dir)

    chat_template = getattr(tokenizer, "chat_template", None)  # before the processor may set one
    strategy = llava_config.vision_feature_select_strategy
    build_processor(tokenizer, vision_dir, vision_config, config, strategy).save_pretrained(out_dir)
    return ConversionReport(
        out_dir=out_dir,
        adaptive=adaptive,
        num_layers=config["num_hidden_layers"],
        vocab_size=vocab,
        padded_vocab_size=padded,
        image_token_id=image_token_id,
        pad_token_id=pad_token_id,
        dtype=str(target).removeprefix("torch."),
        vision_weights=vision_weights,
        chat_template="tokenizer" if chat_template else "vicuna_v1",
    )


def build_llava(config: LlavaConfig, state: dict[str, torch.Tensor]) -> LlavaForConditionalGeneration:
    """A HF Llava holding exactly `state` (strict). Parameters are created on the meta device and then
    take the given tensors, so converting a 7B model does not hold two copies of it."""
    with init_empty_weights():  # parameters on meta; buffers (rotary tables, position ids) computed
        model = LlavaForConditionalGeneration(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: {tuple(state[key].shape)} in the checkpoint, {tuple(expected[key].shape)} in the model"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            named = [f"{k} (official {official_key_for(k)})" if official_key_for(k) else k for k in missing]
            problems.append(f"{len(missing)} missing: {listing(named)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {listing(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} with another shape: {listing(mismatched)}")
        raise ValueError("the converted weights do not fit HF Llava: " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)
    on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if on_meta:
        raise ValueError(f"tensors left uninitialised after loading: {listing(on_meta)}")
    return model.eval()


# ---- steps --------------------------------------------------------------------------------------


def _add_vision_tower(llava_state: dict[str, torch.Tensor], official_dir: Path, vision_dir: Path) -> str:
    """Put the vision tower's weights into `llava_state` unless the checkpoint holds its own (fine-tuned)
    tower; return where they came from."""
    if any(key.startswith("model.vision_tower.") for key in llava_state):
        return f"{official_dir} (the checkpoint's own, fine-tuned tower)"
    llava_state |= map_vision_tower_state_dict(load_weights(vision_dir, "vision tower"))
    return str(vision_dir)


def _grow_vocabulary(state: dict[str, torch.Tensor], config: dict[str, Any], padded: int, seed: int) -> None:
    """Give the embedding and lm_head `padded` rows (the lm_head copied from the embedding when tied)."""
    vocab = config["vocab_size"]
    if EMBED_KEY not in state:
        raise ValueError("the official checkpoint lacks model.embed_tokens.weight")
    if HEAD_KEY not in state and config.get("tie_word_embeddings"):
        state[HEAD_KEY] = state[EMBED_KEY].clone()
    if HEAD_KEY not in state:
        raise ValueError("the official checkpoint lacks lm_head.weight (and tie_word_embeddings is not set)")
    if state[EMBED_KEY].shape[0] != vocab:
        raise ValueError(
            f"model.embed_tokens.weight has {state[EMBED_KEY].shape[0]} rows; vocab_size is {vocab}"
        )
    state[EMBED_KEY], state[HEAD_KEY] = extend_vocabulary(
        state[EMBED_KEY], state[HEAD_KEY], padded, torch.Generator().manual_seed(seed)
    )


def _set_generation_config(
    llava: LlavaForConditionalGeneration, official_dir: Path, pad_token_id: int
) -> None:
    """The checkpoint's generation settings when it has them, with the new pad token."""
    if (official_dir / "generation_config.json").is_file():
        llava.generation_config = GenerationConfig.from_pretrained(official_dir)
    llava.generation_config.pad_token_id = pad_token_id


def _save_adaptive(
    llava: LlavaForConditionalGeneration,
    adaptive: AdaptiveConfig,
    adaptive_state: dict[str, torch.Tensor],
    out_dir: Path,
) -> None:
    """Wrap the Llava as an AdaLlava holding the official scheduler's weights (float32) and save it."""
    model = AdaLlava.from_base(llava, adaptive)
    for prefix, module in (("latency_encoder.", model.latency_encoder), ("scheduler.", model.scheduler)):
        part = {k[len(prefix) :]: v.float() for k, v in adaptive_state.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)
    model.scheduler_trained = True  # the authors trained it: budgets are allowed
    model.save_pretrained(out_dir)


def _target_dtype(dtype: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.dtype:
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    declared = config.get("torch_dtype") or config.get("dtype")
    if declared in DTYPES:
        return DTYPES[declared]
    return state[EMBED_KEY].dtype


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
