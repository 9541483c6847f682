"""A tiny, randomly initialised LLaVA for the synthetic world, built offline from Hugging Face classes.

`build_tiny_llava` writes a folder that `AutoProcessor.from_pretrained` and
`LlavaForConditionalGeneration.from_pretrained` load with no network access:

* tokenizer.json: a word-level tokenizer trained with `tokenizers` on the world's closed vocabulary.
  The fixed instruction sentences of LLaVA-1.5's prompts ("Answer the question using a single word
  or phrase.", ...) and the chat roles are single tokens: the text is LLaVA's, the sequences stay
  short enough to train on two CPU cores. Its normaliser folds case onto the vocabulary ("how",
  "HOW" -> "How"; "Circles" -> "circles"), so only words outside the vocabulary become <unk>.
* a LLaVA-1.5 chat template: `USER: <image>\\n{question} ASSISTANT: {answer}</s>`; the tokenizer
  prepends <s>.
* a CLIP image processor (48x48, OpenAI CLIP mean/std) and a `LlavaProcessor` that expands <image>
  into (image_size / patch_size)^2 tokens (CLS is dropped: strategy "default").
* model.safetensors + config.json: a `LlavaForConditionalGeneration` with a 2-layer CLIP tower and an
  8-layer Llama (hidden 128), the configuration measured to train in ~25 minutes on 2 cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from adallava.data.world.questions import MME_SUFFIX
from adallava.data.world.vocabulary import words as split_words
from adallava.data.world.vocabulary import world_vocabulary
from adallava.engine import hf_compat
from adallava.inference.prompts import LETTER_ANSWER, SHORT_ANSWER

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)  # ids 0..4, in this order
PAD_ID, BOS_ID, EOS_ID, UNK_ID, IMAGE_ID = range(len(SPECIAL_TOKENS))
# Whole sentences as one token each (see the module docstring).
PHRASES = ("USER:", "ASSISTANT:", SHORT_ANSWER, LETTER_ANSWER, MME_SUFFIX.strip())
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# LLaVA-1.5's conversation format without its system sentence. Content may be a string (with the
# literal <image>) or a list of {"type": "image"} / {"type": "text", "text": ...} items.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ eos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Shape of the tiny LLaVA. Defaults: the bundled models' (world v3, 2.18M parameters); the v2 world's
    models were `image_size=48, text_layers=8, hidden_size=128` (1.74M)."""

    image_size: int = 96
    """Input images are resized/cropped to image_size x image_size pixels."""
    patch_size: int = 16
    vision_layers: int = 2
    vision_hidden: int = 128
    vision_intermediate: int = 256
    vision_heads: int = 4
    text_layers: int = 16
    hidden_size: int = 96
    intermediate_size: int = 256
    num_heads: int = 4
    initializer_range: float = 0.08
    """Std of the text model's (and projector's) init: 0.08 broke the prototype's answer-prior plateau."""
    max_position_embeddings: int = 256

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "vision_layers", "vision_hidden", "vision_intermediate"):
            _positive(self, name)
        for name in ("vision_heads", "text_layers", "hidden_size", "intermediate_size", "num_heads"):
            _positive(self, name)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.vision_hidden % self.vision_heads:
            raise ValueError(
                f"vision_hidden ({self.vision_hidden}) must be divisible by "
                f"vision_heads ({self.vision_heads})"
            )
        if not 0 < self.initializer_range <= 1:
            raise ValueError(f"initializer_range must be in (0, 1], got {self.initializer_range}")
        if self.max_position_embeddings < self.image_tokens + 8:
            raise ValueError(
                f"max_position_embeddings ({self.max_position_embeddings}) leaves no room for text after "
                f"{self.image_tokens} image tokens"
            )

    @property
    def image_tokens(self) -> int:
        """LLM tokens per image: one per patch (CLS dropped)."""
        return (self.image_size // self.patch_size) ** 2


def _positive(spec: TinyLlavaSpec, name: str) -> None:
    if getattr(spec, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(spec, name)}")


def build_tokenizer(vocabulary: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `vocabulary` (ids: the 5 special tokens, then the words in sorted
    order, then the phrases). Words are split like `adallava.data.world.vocabulary.words`."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    vocabulary = sorted({w for word in vocabulary for w in split_words(word)} - set(SPECIAL_TOKENS))
    # Each word once: the trainer orders equal counts alphabetically, so ids do not depend on data.
    trainer = trainers.WordLevelTrainer(
        special_tokens=list(SPECIAL_TOKENS), min_frequency=1, show_progress=False
    )
    tokenizer.train_from_iterator(vocabulary, trainer=trainer)
    tokenizer.normalizer = case_normalizer(tokenizer.get_vocab())
    tokenizer.add_tokens([AddedToken(phrase, normalized=False) for phrase in PHRASES])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, BOS_ID)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        model_max_length=256,
    )
    ids = fast.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if ids != list(range(len(SPECIAL_TOKENS))):  # the model config relies on these ids
        raise RuntimeError(f"special token ids are {ids}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    return fast


def case_normalizer(vocabulary: Iterable[str]) -> normalizers.Normalizer:
    """Lower-casing that keeps the vocabulary's own spellings: a word written in any case the
    vocabulary lacks becomes its lower-case form if the vocabulary has one, else the vocabulary's
    spelling ("how" -> "How"); a word the vocabulary spells exactly stays as it is, so "Is" and "is"
    keep their two ids and every sentence the model was trained on tokenizes as before. (Plain
    `Lowercase` would merge such pairs and change what the trained bundled models read.)"""
    spellings: dict[str, set[str]] = {}
    for word in vocabulary:
        if word.isascii() and word.isalpha():
            spellings.setdefault(word.lower(), set()).add(word)
    rules = []
    for lower, known in sorted(spellings.items()):
        if len(known) == 2 ** len(lower):  # every spelling is a word of its own ("A" and "a")
            continue
        target = lower if lower in known else min(known)
        exact = "|".join(sorted(known))
        # Onig regex: a whole word, in any case, that is not one of the known spellings.
        rules.append(normalizers.Replace(Regex(rf"\b(?!(?:{exact})\b)(?i:{lower})\b"), target))
    return normalizers.Sequence(rules)


def build_processor(
    tokenizer: PreTrainedTokenizerFast, spec: TinyLlavaSpec = TinyLlavaSpec()
) -> LlavaProcessor:
    """CLIP preprocessing at spec.image_size and a LlavaProcessor with the chat template."""
    size = spec.image_size
    image_processor = hf_compat.clip_image_processor_class()(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, which the "default" strategy drops
        chat_template=CHAT_TEMPLATE,
    )


def world_model_config(vocab_size: int, spec: TinyLlavaSpec = TinyLlavaSpec()) -> LlavaConfig:
    """The bundled models' architecture: a Llama text model and a CLIP tower of `spec`'s shape, for
    the world's vocabulary (`adallava.testing.tiny_llava_config` makes random test models instead)."""
    text_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=IMAGE_ID,  # stored as image_token_index (LlavaConfig.attribute_map)
        image_seq_length=spec.image_tokens,
        vision_feature_layer=-1,  # the last layer: -2 would waste half of a 2-layer tower
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def build_tiny_llava(
    out_dir: str | Path,
    vocabulary: Sequence[str] | None = None,
    *,
    world: str | Path | None = None,
    spec: TinyLlavaSpec | None = None,
    seed: int = 0,
) -> Path:
    """Write a random-init tiny LLaVA folder (processor, tokenizer, chat template, model) to `out_dir`.

    vocabulary: words the tokenizer must know (default: the world's closed vocabulary). world: a
    generated world folder; its image size / patch size set the spec's, and every word of its
    questions and answers must be in the vocabulary (a ValueError lists any that are not).
    seed: the weights' initialisation (the caller's torch RNG state is left untouched).
    """
    words = list(vocabulary) if vocabulary is not None else world_vocabulary()
    spec = spec or TinyLlavaSpec()
    if world is not None:
        from adallava.data.world.generate import read_manifest

        manifest = read_manifest(world)
        spec = TinyLlavaSpec(
            **{**asdict(spec), "image_size": manifest["image_size"], "patch_size": manifest["patch_size"]}
        )
        missing = sorted(set(world_words(world)) - {w for word in words for w in split_words(word)})
        if missing:
            raise ValueError(f"{world}: words outside the vocabulary: {', '.join(missing[:20])}")
    tokenizer = build_tokenizer(words)
    processor = build_processor(tokenizer, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(world_model_config(len(tokenizer), spec))
    generation = model.generation_config
    generation.bos_token_id, generation.eos_token_id, generation.pad_token_id = BOS_ID, EOS_ID, PAD_ID
    generation.max_new_tokens = 24  # the longest answer (a caption of 7 objects) is 14 words
    generation.do_sample = False
    generation.suppress_tokens = [IMAGE_ID]  # never emit the image placeholder
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir


def world_words(world: str | Path) -> set[str]:
    """Every word of a generated world's prompts and answers (train.json or heldout.jsonl)."""
    from adallava.data.world.generate import read_manifest

    world = Path(world)
    manifest = read_manifest(world)
    texts: list[str] = []
    if manifest["split"] == "train":
        for record in json.loads((world / manifest["conversations"]).read_text(encoding="utf-8")):
            texts += [turn["value"].replace(IMAGE, " ") for turn in record["conversations"]]
    else:
        for line in (world / manifest["heldout"]).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [row["text"], row["answer"]]
    return {w for text in texts for w in split_words(text)}
