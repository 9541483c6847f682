"""Checkpoint conversion: official AdaLLaVA checkpoints -> adallava checkpoints, and `init` from any HF Llava.

An official AdaLLaVA checkpoint is in the original LLaVA repository's format (`model_type:
ada_llava_llama`; DESIGN.md, "Facts about the official AdaLLaVA checkpoints"). Ours is a plain HF Llava
folder plus `adaptive_config.json` and `adaptive.safetensors` (see `AdaLlava.save_pretrained`).

The mapping follows transformers' own LLaVA conversion
(`transformers/models/llava/convert_llava_weights_to_hf.py`):
- LLaMA keys go under the language model, `model.mm_projector.{0,2}` become
  `model.multi_modal_projector.linear_{1,2}`, the CLIP tower (a separate folder) `model.vision_tower`;
- the LLaVA repo marks the image with the index -200 instead of a token, so the tokenizer gains
  `<image>` (id V) and `<pad>` (id V+1), and the embeddings and lm_head grow to a multiple of 64 rows;
  every new row is drawn from N(mu, 1e-5 * Sigma) of the existing embedding rows.
The scheduler's weights go to our latency encoder and scheduler head one to one.

Key and config mapping are small pure functions (tested on their own); `convert_official` and
`init_from_base` are the drivers behind `adallava convert` and `adallava init`.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import (
    AddedToken,
    AutoTokenizer,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from adallava.core.config import TOKEN_SELECTIONS, AdaptiveConfig
from adallava.engine import hf_compat
from adallava.engine.llava import AdaLlava
from adallava.io.checkpoint import DTYPES, check_out_dir

OFFICIAL_MODEL_TYPE = "ada_llava_llama"

# ---- tables -------------------------------------------------------------------------------------

# (official prefix, part, our prefix). "llava" keys go to the HF Llava, "adaptive" keys to
# adaptive.safetensors. Prefixes do not overlap, so the order does not matter.
OFFICIAL_KEY_MAP = (
    ("model.embed_tokens.", "llava", "model.language_model.embed_tokens."),
    ("model.layers.", "llava", "model.language_model.layers."),
    ("model.norm.", "llava", "model.language_model.norm."),
    ("lm_head.", "llava", "lm_head."),
    ("model.mm_projector.0.", "llava", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "llava", "model.multi_modal_projector.linear_2."),
    # Present only when the tower was fine-tuned and saved with the model.
    ("model.vision_tower.vision_tower.vision_model.", "llava", "model.vision_tower."),
    ("scheduler.mlp_head.", "adaptive", "scheduler.head."),
    ("scheduler.scheduler_up_proj.net.", "adaptive", "latency_encoder.net."),
)
# The official scheduler's weights and their names here.
OFFICIAL_SCHEDULER_KEYS = {
    f"scheduler.{official}.{param}": f"{ours}.{param}"
    for official, ours in (
        ("mlp_head", "scheduler.head"),
        ("scheduler_up_proj.net.0", "latency_encoder.net.0"),  # LayerNorm(2F)
        ("scheduler_up_proj.net.1", "latency_encoder.net.1"),  # Linear(2F, hidden)
        ("scheduler_up_proj.net.3", "latency_encoder.net.3"),  # Linear(hidden, hidden); net.2 is GELU
    )
    for param in ("weight", "bias")
}
# Buffers that older transformers saved and current ones recompute.
DROPPED_KEY_SUFFIXES = (".rotary_emb.inv_freq", "embeddings.position_ids")

# Config fields of the official checkpoint that make up the LLaMA text config (those present are used).
LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
    "rms_norm_eps", "rope_theta", "rope_scaling", "attention_bias", "attention_dropout", "mlp_bias",
    "pretraining_tp", "tie_word_embeddings", "bos_token_id", "eos_token_id", "use_cache",
)  # fmt: skip
REQUIRED_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "num_prefix_layers", "scheduler_type",
)  # fmt: skip
SCHEDULER_TYPES = {"L": "layer", "H": "head"}
# LLaVA's mm_vision_select_feature -> transformers' vision_feature_select_strategy.
SELECT_FEATURES = {"patch": "default", "cls_patch": "full"}
# transformers' conversion appends <image> and <pad>, then pads the vocabulary to this multiple.
VOCAB_MULTIPLE = 64
NEW_ROW_COVARIANCE_SCALE = 1e-5

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt",
)  # fmt: skip
# What `adallava init` copies from a HF Llava folder so that the output loads offline with AutoProcessor.
PROCESSOR_FILES = (
    *TOKENIZER_FILES, "preprocessor_config.json", "processor_config.json", "chat_template.json",
    "chat_template.jinja",
)  # fmt: skip

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


# ---- config mapping (pure) ----------------------------------------------------------------------


def read_official_config(directory: str | Path) -> dict[str, Any]:
    """config.json of an official AdaLLaVA checkpoint, checked: the model type, the required fields and
    the LLaVA options this conversion supports. Raises FileNotFoundError / ValueError naming the field."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --from-official must be an official AdaLLaVA checkpoint folder"
        )
    config = json.loads(path.read_text())
    model_type = config.get("model_type")
    if model_type != OFFICIAL_MODEL_TYPE:
        hint = (
            " (a plain LLaVA checkpoint: convert it with transformers' convert_llava_weights_to_hf.py, then "
            "`adallava init --base DIR`)"
            if model_type in ("llava", "llava_llama")
            else ""
        )
        raise ValueError(f"{path}: model_type is {model_type!r}, expected {OFFICIAL_MODEL_TYPE!r}{hint}")
    missing = [field for field in REQUIRED_FIELDS if config.get(field) is None]
    if missing:
        raise ValueError(
            f"{path} lacks the field(s) {', '.join(missing)} needed to convert an AdaLLaVA checkpoint"
        )
    if config["scheduler_type"] not in SCHEDULER_TYPES:
        raise ValueError(
            f"{path}: scheduler_type must be one of {sorted(SCHEDULER_TYPES)} (AdaLLaVA-L / AdaLLaVA-H), "
            f"got {config['scheduler_type']!r}"
        )
    if config["scheduler_type"] == "H" and config.get("scheduler_rank") is None:
        raise ValueError(f"{path}: scheduler_type 'H' needs the field scheduler_rank (heads per budget unit)")
    if config["mm_projector_type"] != "mlp2x_gelu":
        raise ValueError(
            f"{path}: mm_projector_type {config['mm_projector_type']!r} is not supported; HF Llava's "
            "projector is LLaVA-1.5's 'mlp2x_gelu' (Linear, GELU, Linear)"
        )
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURES:
        raise ValueError(
            f"{path}: mm_vision_select_feature must be one of {sorted(SELECT_FEATURES)}, got {feature!r}"
        )
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if config.get(flag):
            raise ValueError(f"{path}: {flag}=true is not supported (HF Llava has no image start/end tokens)")
    if config.get("mm_patch_merge_type", "flat") != "flat":
        raise ValueError(
            f"{path}: mm_patch_merge_type must be 'flat' (LLaVA-1.5), got {config['mm_patch_merge_type']!r}"
        )
    if config.get("image_aspect_ratio", "pad") not in ("pad", "square", None):
        raise ValueError(
            f"{path}: image_aspect_ratio {config['image_aspect_ratio']!r} is not supported; "
            "LLaVA-1.5 uses 'pad'"
        )
    if config.get("token_selecting", "none") not in TOKEN_SELECTIONS:
        raise ValueError(
            f"{path}: token_selecting must be one of {TOKEN_SELECTIONS}, got {config['token_selecting']!r}"
        )
    return config


def adaptive_config_from_official(config: dict[str, Any], latency_frequencies: int = 128) -> AdaptiveConfig:
    """AdaptiveConfig that reproduces the official checkpoint: switch kind from scheduler_type, P,
    rank = scheduler_rank, one MLP group per head and the official selection rule."""
    switches = SCHEDULER_TYPES[config["scheduler_type"]]
    heads = config["num_attention_heads"]
    rank = config.get("scheduler_rank") or AdaptiveConfig.rank
    if switches == "head":
        if config.get("num_key_value_heads", heads) != heads:
            raise ValueError(
                "the official AdaLLaVA-H switches single attention heads; num_key_value_heads "
                f"({config['num_key_value_heads']}) != num_attention_heads ({heads}) is not supported"
            )
        if heads % rank:
            raise ValueError(f"scheduler_rank ({rank}) must divide num_attention_heads ({heads})")
    return AdaptiveConfig(
        switches=switches,
        num_prefix_layers=config["num_prefix_layers"],
        rank=rank,
        mlp_groups=heads if switches == "head" else None,
        latency_frequencies=latency_frequencies,
        selection="official",
        token_selection=config.get("token_selecting", "none"),
    ).resolve(config["num_hidden_layers"])


def official_num_switches(config: dict[str, Any]) -> int:
    """Rows of the official `scheduler.mlp_head`: one per upper layer (L), or per upper layer one per
    attention head and one per MLP group (H)."""
    upper = config["num_hidden_layers"] - config["num_prefix_layers"]
    return upper * (2 * config["num_attention_heads"] if config["scheduler_type"] == "H" else 1)


def text_config_from_official(config: dict[str, Any], vocab_size: int, pad_token_id: int) -> LlamaConfig:
    """The LLaMA part of the official config, with the grown vocabulary and the new pad token."""
    fields = {name: config[name] for name in LLAMA_FIELDS if config.get(name) is not None}
    fields |= {"vocab_size": vocab_size, "pad_token_id": pad_token_id}
    return LlamaConfig(**fields)


def llava_config_from_official(
    config: dict[str, Any],
    vision_config: CLIPVisionConfig,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int,
) -> LlavaConfig:
    """HF LlavaConfig equivalent to the official LLaVA-1.5 layout (vision_feature_layer =
    mm_vision_select_layer; 'patch' features drop CLIP's CLS token, HF's 'default' strategy)."""
    if vision_config.hidden_size != config["mm_hidden_size"]:
        raise ValueError(
            f"the vision tower's hidden_size ({vision_config.hidden_size}) differs from the checkpoint's "
            f"mm_hidden_size ({config['mm_hidden_size']}); pass the tower named by mm_vision_tower "
            f"({config.get('mm_vision_tower', 'not given')})"
        )
    strategy = SELECT_FEATURES[config.get("mm_vision_select_feature", "patch")]
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config_from_official(config, vocab_size, pad_token_id),
        image_token_id=image_token_id,
        vision_feature_layer=config["mm_vision_select_layer"],
        vision_feature_select_strategy=strategy,
        image_seq_length=patches if strategy == "default" else patches + 1,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        pad_token_id=pad_token_id,
    )


def padded_vocab_size(vocab_size: int, added: int = 2, multiple: int = VOCAB_MULTIPLE) -> int:
    """Rows after appending `added` tokens and padding to `multiple` (32000 -> 32064)."""
    return math.ceil((vocab_size + added) / multiple) * multiple


# ---- key mapping (pure) -------------------------------------------------------------------------


def is_dropped_key(key: str) -> bool:
    return key.endswith(DROPPED_KEY_SUFFIXES)


def map_official_key(key: str) -> tuple[str, str] | None:
    """Official key -> (part, our key), part "llava" or "adaptive"; None if the key is not known."""
    for prefix, part, ours in OFFICIAL_KEY_MAP:
        if key.startswith(prefix):
            return part, ours + key[len(prefix) :]
    return None


def official_key_for(our_key: str) -> str | None:
    """The official name of one of our Llava keys (for error messages); None for vision tower keys."""
    for prefix, part, ours in OFFICIAL_KEY_MAP:
        if part == "llava" and our_key.startswith(ours) and not ours.startswith("model.vision_tower."):
            return prefix + our_key[len(ours) :]
    return None


def map_official_state_dict(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split and rename an official state dict into (HF Llava keys, adaptive keys). Raises ValueError
    listing keys that are neither mapped nor known buffers."""
    llava, adaptive, unknown = {}, {}, []
    for key, tensor in state.items():
        if is_dropped_key(key):
            continue
        mapped = map_official_key(key)
        if mapped is None:
            unknown.append(key)
            continue
        part, ours = mapped
        (llava if part == "llava" else adaptive)[ours] = tensor
    if unknown:
        raise ValueError(
            f"the official checkpoint has {len(unknown)} key(s) this conversion does not know: "
            f"{_listing(unknown)}. Known prefixes: {', '.join(p for p, _, _ in OFFICIAL_KEY_MAP)}"
        )
    return llava, adaptive


def map_vision_tower_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPVisionModel / CLIPModel state dict -> HF Llava's `model.vision_tower.*` keys.

    Older CLIP folders (e.g. openai/clip-vit-large-patch14-336) store `vision_model.*` (and, for a full
    CLIPModel, `text_model.*` and projections, dropped here); transformers 5 saves a CLIPVisionModel
    without that prefix. HF Llava's tower holds the keys without it."""
    prefix = "vision_model."
    has_prefix = any(key.startswith(prefix) for key in state)
    out = {}
    for key, tensor in state.items():
        if has_prefix and not key.startswith(prefix):
            continue  # text tower, projections, logit scale of a CLIPModel
        name = key[len(prefix) :] if has_prefix else key
        if not is_dropped_key(name):
            out["model.vision_tower." + name] = tensor
    return out


def check_adaptive_shapes(config: dict[str, Any], adaptive: dict[str, torch.Tensor]) -> int:
    """Check the official scheduler weights against the config; return the latency frequencies (half the
    latency encoder's input width). Raises ValueError naming the key and the expected shape."""
    hidden = config["hidden_size"]
    missing = [official for official, ours in OFFICIAL_SCHEDULER_KEYS.items() if ours not in adaptive]
    if missing:
        raise ValueError(f"the official checkpoint lacks the scheduler weights {_listing(missing)}")
    switches = official_num_switches(config)
    head = adaptive["scheduler.head.weight"]
    if tuple(head.shape) != (switches, hidden):
        kind = config["scheduler_type"]
        raise ValueError(
            f"scheduler.mlp_head.weight is {tuple(head.shape)}, but scheduler_type {kind!r} with "
            f"num_hidden_layers={config['num_hidden_layers']}, "
            f"num_prefix_layers={config['num_prefix_layers']}, "
            f"num_attention_heads={config['num_attention_heads']} needs ({switches}, {hidden})"
        )
    width = adaptive["latency_encoder.net.0.weight"].shape[0]
    up = tuple(adaptive["latency_encoder.net.1.weight"].shape)
    if width % 2 or up != (hidden, width):
        raise ValueError(
            f"scheduler.scheduler_up_proj.net.1.weight is {up}; expected ({hidden}, {width}) after a "
            f"LayerNorm of even width {width}"
        )
    return width // 2


def extend_vocabulary(
    embed: torch.Tensor, lm_head: torch.Tensor, new_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow the embedding and lm_head matrices [V, D] to [new_size, D] as transformers' LLaVA conversion
    does: each new row is an independent draw from N(mu, 1e-5 * Sigma), mu and Sigma the mean and
    covariance of the existing embedding rows (for the lm_head rows too).

    Drawn as mu + sqrt(1e-5 / V) * (E - mu)^T w with w ~ N(0, I_V), which has exactly that covariance and
    needs neither the D x D matrix nor its factorisation (singular when V <= D)."""
    old, _ = embed.shape
    extra = new_size - old
    if extra < 0:
        raise ValueError(f"cannot shrink the vocabulary from {old} to {new_size} rows")
    rows = embed.float()
    mean = rows.mean(dim=0)  # [D]
    centred = rows - mean  # [V, D]
    noise = torch.randn(2 * extra, old, generator=generator)  # [2X, V]
    samples = mean + (noise @ centred) * math.sqrt(NEW_ROW_COVARIANCE_SCALE / old)  # [2X, D]
    return (
        torch.cat([embed, samples[:extra].to(embed.dtype)]),
        torch.cat([lm_head, samples[extra:].to(lm_head.dtype)]),
    )


# ---- file reading -------------------------------------------------------------------------------


def load_weights(directory: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """All tensors of a folder's weights: safetensors shards (`model*.safetensors`, with or without
    an index) or, failing those, PyTorch shards (`pytorch_model*.bin`, read with weights_only=True)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} folder {directory} does not exist")
    for index_name, pattern, reader in (
        ("model.safetensors.index.json", "model*.safetensors", _read_safetensors),
        ("pytorch_model.bin.index.json", "pytorch_model*.bin", _read_bin),
    ):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            for shard in shards:
                if not (directory / shard).is_file():
                    raise FileNotFoundError(
                        f"{what}: shard {shard} listed in {index_name} is missing from {directory}"
                    )
            files = [directory / shard for shard in shards]
        else:
            files = sorted(directory.glob(pattern))
        if files:
            state: dict[str, torch.Tensor] = {}
            for file in files:
                state.update(reader(file))
            return state
    raise FileNotFoundError(
        f"{what} folder {directory} holds no weights: expected model.safetensors (or model-*.safetensors "
        "shards with model.safetensors.index.json) or pytorch_model.bin (or its shards with "
        "pytorch_model.bin.index.json)"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def read_vision_config(directory: str | Path) -> CLIPVisionConfig:
    """The CLIP vision config of a CLIPVisionModel or CLIPModel folder."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --vision-tower must be a Hugging Face CLIP folder "
            "(e.g. openai/clip-vit-large-patch14-336)"
        )
    model_type = json.loads(path.read_text()).get("model_type")
    if model_type not in ("clip", "clip_vision_model"):
        raise ValueError(
            f"{path}: model_type {model_type!r}; --vision-tower must be a CLIP (vision) model folder"
        )
    return CLIPVisionConfig.from_pretrained(directory)


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


# ---- drivers ------------------------------------------------------------------------------------


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
    frequencies = check_adaptive_shapes(config, adaptive_state)
    adaptive = adaptive_config_from_official(config, frequencies)
    if any(key.startswith("model.vision_tower.") for key in llava_state):
        vision_weights = f"{official_dir} (the checkpoint's own, fine-tuned tower)"
    else:
        llava_state |= map_vision_tower_state_dict(load_weights(vision_dir, "vision tower"))
        vision_weights = str(vision_dir)

    tokenizer = load_official_tokenizer(official_dir)
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

    target = _target_dtype(dtype, config, llava_state)
    embed_key, head_key = "model.language_model.embed_tokens.weight", "lm_head.weight"
    if embed_key not in llava_state:
        raise ValueError("the official checkpoint lacks model.embed_tokens.weight")
    if head_key not in llava_state and config.get("tie_word_embeddings"):
        llava_state[head_key] = llava_state[embed_key].clone()
    if head_key not in llava_state:
        raise ValueError("the official checkpoint lacks lm_head.weight (and tie_word_embeddings is not set)")
    if llava_state[embed_key].shape[0] != vocab:
        raise ValueError(
            f"model.embed_tokens.weight has {llava_state[embed_key].shape[0]} rows; vocab_size is {vocab}"
        )
    padded = padded_vocab_size(vocab)
    llava_state[embed_key], llava_state[head_key] = extend_vocabulary(
        llava_state[embed_key], llava_state[head_key], padded, torch.Generator().manual_seed(seed)
    )
    llava_state = {key: _cast(tensor, target) for key, tensor in llava_state.items()}

    llava_config = llava_config_from_official(config, vision_config, padded, image_token_id, pad_token_id)
    llava_config.dtype = target
    llava = build_llava(llava_config, llava_state)
    generation_file = official_dir / "generation_config.json"
    if generation_file.is_file():
        llava.generation_config = GenerationConfig.from_pretrained(official_dir)
    llava.generation_config.pad_token_id = pad_token_id

    model = AdaLlava.from_base(llava, adaptive)
    for prefix, module in (("latency_encoder.", model.latency_encoder), ("scheduler.", model.scheduler)):
        part = {k[len(prefix) :]: v.float() for k, v in adaptive_state.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)
    model.save_pretrained(out_dir)

    chat_template = getattr(tokenizer, "chat_template", None)
    processor = LlavaProcessor(
        image_processor=build_image_processor(
            vision_dir, vision_config, config.get("image_aspect_ratio", "pad") == "pad"
        ),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=chat_template or VICUNA_V1_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
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
            problems.append(f"{len(missing)} missing: {_listing(named)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} with another shape: {_listing(mismatched)}")
        raise ValueError("the converted weights do not fit HF Llava: " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)
    on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if on_meta:
        raise ValueError(f"tensors left uninitialised after loading: {_listing(on_meta)}")
    return model.eval()


# ---- helpers ------------------------------------------------------------------------------------


def _target_dtype(dtype: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.dtype:
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    declared = config.get("torch_dtype") or config.get("dtype")
    if declared in DTYPES:
        return DTYPES[declared]
    return state["model.language_model.embed_tokens.weight"].dtype


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
