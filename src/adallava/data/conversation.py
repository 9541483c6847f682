"""LLaVA conversation data: a dataset of (image, multi-turn conversation) samples and its collator.

Reads LLaVA's instruction-tuning JSON (`llava_v1_5_mix665k.json` format) or the same records as JSONL:

    [{"id": "000001", "image": "coco/train2017/000001.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                        {"from": "gpt", "value": "A cat."}, ...]}, ...]

Turns alternate human / gpt, starting with human and ending with gpt; `<image>` appears exactly once,
in the first human turn, when the sample has an image, and never otherwise (text-only samples have
no "image" key). Bad records raise a `ValueError` that names the file, the sample (index, line for
JSONL, id) and the field; with `skip_bad=True` they are counted, logged and left out instead.

Each sample is rendered with the processor's (or tokenizer's) chat template when it has one, else in
LLaVA-1.5's format (`USER: <image>\\n... ASSISTANT: answer</s>USER: ...`), tokenised once by the HF
`LlavaProcessor` (which expands `<image>` into the model's number of image tokens), and labelled -100
everywhere except the assistant answers and the end-of-sequence token that closes each of them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence

from adallava.inference.prompts import chat_template_owner, template_content_form
from adallava.modules.latency import IGNORE_INDEX

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")  # the roles of even and odd turns
PROMPT_FORMATS = ("auto", "chat_template", "llava_v1")
_PROBE_QUESTION, _PROBE_ANSWER = "adallava probe question", "adallava probe answer"


@dataclass(frozen=True)
class ConversationSample:
    """One tokenised sample. input_ids / labels: long [T]; pixel_values: [1, 3, H, W] or None."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    id: str


@dataclass(frozen=True)
class SkippedSample:
    index: int
    id: str
    reason: str


def load_records(path: str | Path) -> tuple[list[Any], bool]:
    """The records of a LLaVA JSON list or of a JSONL file (one record per line).
    Returns (records, is_jsonl). Raises ValueError naming the file (and line) on malformed JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data {path} does not exist (set `data` to a LLaVA JSON file)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from None
        return records, True
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(records).__name__}")
    return records, False


def check_record(record: Any, image_folder: Path | None) -> tuple[str, str] | None:
    """The first problem of one record as (field, message), or None when it is well formed.
    Checks keys, roles and their order, value types, `<image>` placement and the image file."""
    if not isinstance(record, dict):
        return "", f"expected an object with 'conversations', got {type(record).__name__}"
    turns = record.get("conversations")
    if turns is None:
        return "conversations", "missing"
    if not isinstance(turns, list) or len(turns) < 2:
        return "conversations", "expected a list of at least one human and one gpt turn"
    for k, turn in enumerate(turns):
        field = f"conversations[{k}]"
        if not isinstance(turn, dict):
            return field, f"expected an object with 'from' and 'value', got {type(turn).__name__}"
        for key in ("from", "value"):
            if key not in turn:
                return f"{field}.{key}", "missing"
        if turn["from"] != ROLES[k % 2]:
            return f"{field}.from", (
                f"expected {ROLES[k % 2]!r} (turns alternate human, gpt, ...), got {turn['from']!r}"
            )
        if not isinstance(turn["value"], str):
            return f"{field}.value", f"expected a string, got {type(turn['value']).__name__}"
        if k > 0 and IMAGE_TOKEN in turn["value"]:
            return f"{field}.value", f"{IMAGE_TOKEN} may appear only in the first human turn"
    if len(turns) % 2:
        return f"conversations[{len(turns) - 1}]", "the conversation must end with a gpt turn"
    count = turns[0]["value"].count(IMAGE_TOKEN)
    if "image" not in record:
        if count:
            return "conversations[0].value", f"has {IMAGE_TOKEN} but the sample has no 'image'"
        return None
    image = record["image"]
    if not isinstance(image, str):
        return "image", f"expected one file name, got {type(image).__name__} (one image per sample)"
    if count != 1:
        return "conversations[0].value", f"expected exactly one {IMAGE_TOKEN} for the image, found {count}"
    if image_folder is not None and not (image_folder / image).is_file():
        return "image", f"file not found: {image_folder / image}"
    return None


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad to a square around the centre (LLaVA-1.5's `image_aspect_ratio: pad`)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def answer_labels(input_ids: torch.Tensor, offsets: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Labels that keep the tokens starting inside an answer span and ignore all others.
    input_ids: long [T]; offsets: long [T, 2] character offsets; spans: long [K, 2] -> long [T]."""
    starts = offsets[:, 0]  # [T]
    inside = (starts[None, :] >= spans[:, :1]) & (starts[None, :] < spans[:, 1:])  # [K, T]
    # Tokens the tokenizer adds itself (BOS) have empty offsets (0, 0) and are never answers.
    inside &= offsets[:, 1] > offsets[:, 0]
    return torch.where(inside.any(0), input_ids, torch.full_like(input_ids, IGNORE_INDEX))


class ConversationDataset(torch.utils.data.Dataset):
    """LLaVA conversation JSON -> `ConversationSample`s, tokenised by a HF `LlavaProcessor`.

    json_path: a LLaVA JSON list or JSONL file. image_folder: where relative image paths resolve
    (default: the JSON file's folder). prompt_format: 'auto' (the chat template if the processor or
    its tokenizer has one, else 'llava_v1'), 'chat_template' or 'llava_v1'. Sequences longer than
    `max_length` tokens are cut at the end (an error if that cuts image tokens or every answer).
    cache_tokens: keep each sample's input_ids and labels after its first use, so later epochs only
    process its image (worth it for short samples on a CPU; memory grows with the data).
    cache_images: keep each sample's processed pixel values too, so later epochs do no image work at
    all (for small images only: 48x48 costs 27 KB a sample, LLaVA-1.5's 336x336 1.35 MB).
    """

    def __init__(
        self,
        json_path: str | Path,
        image_folder: str | Path | None,
        processor,
        max_length: int | None = 2048,
        prompt_format: str = "auto",
        system_prompt: str = "",
        pad_to_square: bool = False,
        skip_bad: bool = False,
        cache_tokens: bool = False,
        cache_images: bool = False,
    ):
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
        self.path = Path(json_path)
        self.image_folder = Path(image_folder) if image_folder is not None else self.path.parent
        if not self.image_folder.is_dir():
            raise FileNotFoundError(f"image folder {self.image_folder} does not exist (set `image_folder`)")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.system_prompt = system_prompt
        self.pad_to_square = pad_to_square
        self.cache_tokens = cache_tokens
        self.cache_images = cache_images
        self._token_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._pixel_cache: dict[int, torch.Tensor | None] = {}
        if self.tokenizer.eos_token is None:
            raise ValueError("the tokenizer has no eos_token; answers must end with one to teach stopping")
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self._template_owner = chat_template_owner(processor, prompt_format)
        self._content_form = self._probe_content_form() if self._template_owner is not None else None

        records, self._jsonl = load_records(self.path)
        self.records: list[dict] = []
        self.positions: list[int] = []  # index of each kept record in the file
        self.skipped: list[SkippedSample] = []
        for index, record in enumerate(records):
            problem = check_record(record, self.image_folder)
            if problem is None:
                self.records.append(record)
                self.positions.append(index)
                continue
            field, message = problem
            error = self._where(index, record, field) + message
            if not skip_bad:
                raise ValueError(error)
            self.skipped.append(SkippedSample(index, str(_record_id(record, index)), message))
            logger.warning("skipping %s", error)
        if self.skipped:
            logger.warning(
                "%s: skipped %d of %d samples (skip_bad)", self.path, len(self.skipped), len(records)
            )
        if not self.records:
            raise ValueError(
                f"{self.path}: no usable samples ({len(records)} records, {len(self.skipped)} bad)"
            )
        self.num_text_only = sum("image" not in r for r in self.records)

    # ---- rendering -------------------------------------------------------------------------------
    def _messages(self, turns: list[dict], form: str) -> list[dict]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for k, turn in enumerate(turns):
            role = "user" if k % 2 == 0 else "assistant"
            value = turn["value"]
            if form == "parts":  # HF multimodal templates: [{"type": "image"}, {"type": "text", ...}]
                parts = [{"type": "image"}] if IMAGE_TOKEN in value else []
                text = value.replace(IMAGE_TOKEN, "").strip()
                messages.append({"role": role, "content": [*parts, {"type": "text", "text": text}]})
            else:
                messages.append({"role": role, "content": value})
        if form == "parts" and self.system_prompt:
            messages[0]["content"] = [{"type": "text", "text": self.system_prompt}]
        return messages

    def _apply_template(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self._template_owner.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _probe_content_form(self) -> str:
        """Chat templates take message content either as a string (with `<image>` inline) or as a
        list of typed parts; find which one this template renders."""
        probe = [{"value": f"{IMAGE_TOKEN}\n{_PROBE_QUESTION}"}, {"value": _PROBE_ANSWER}]

        def renders(form: str) -> bool:
            text = self._apply_template(self._messages(probe, form), add_generation_prompt=False)
            return _PROBE_QUESTION in text and _PROBE_ANSWER in text and text.count(IMAGE_TOKEN) == 1

        form = template_content_form(renders, ("text", "parts"))
        if form is not None:
            return form
        raise ValueError(
            "the chat template renders neither string nor list-of-parts message content with the image "
            "and both turns; set prompt_format: llava_v1"
        )

    def render(self, turns: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The prompt text of a conversation and the character spans [start, end) of its answers,
        each ending with the end-of-sequence token."""
        eos = self.tokenizer.eos_token
        if self._template_owner is None:  # LLaVA-1.5 ("v1"): sep " ", sep2 "</s>"
            text = f"{self.system_prompt} " if self.system_prompt else ""
            spans = []
            for k in range(0, len(turns), 2):
                text += f"USER: {turns[k]['value']} ASSISTANT:"
                start = len(text)
                text += f" {turns[k + 1]['value']}{eos}"
                spans.append((start, len(text)))
            return text, spans
        messages = self._messages(turns, self._content_form)
        full = self._apply_template(messages, add_generation_prompt=False)
        offset = len(messages) - len(turns)  # a system message first
        pieces, spans, cursor = [], [], 0
        for k in range(1, len(turns), 2):
            prompt = self._apply_template(messages[: offset + k], add_generation_prompt=True)
            answered = self._apply_template(messages[: offset + k + 1], add_generation_prompt=False)
            if not (answered.startswith(prompt) and full.startswith(answered) and len(prompt) >= cursor):
                raise ValueError(
                    "the chat template does not render conversations incrementally (the text up to an "
                    "answer is not a prefix of the whole); set prompt_format: llava_v1"
                )
            pieces.append(full[cursor : len(prompt)])
            answer = full[len(prompt) : len(answered)]
            core = answer.rstrip()
            if eos not in answer:  # e.g. llava-hf's template ends answers with a space, not </s>
                answer = core + eos + answer[len(core) :]
                core += eos
            start = sum(map(len, pieces))
            spans.append((start, start + len(core)))
            pieces.append(answer)
            cursor = len(answered)
        pieces.append(full[cursor:])
        return "".join(pieces), spans

    # ---- samples ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def _where(self, index: int, record: Any, field: str) -> str:
        line = f" (line {index + 1})" if self._jsonl else ""
        ident = _record_id(record, index)
        return (
            f"{self.path}: sample {index}{line}, id {ident!r}"
            + (f", field '{field}'" if field else "")
            + ": "
        )

    def load_image(self, index: int) -> Image.Image:
        record = self.records[index]
        path = self.image_folder / record["image"]
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as error:
            raise ValueError(
                self._where(self.positions[index], record, "image") + f"cannot read {path}: {error}"
            ) from None
        if self.pad_to_square:
            mean = self.processor.image_processor.image_mean
            image = expand_to_square(image, tuple(int(255 * m) for m in mean))
        return image

    def __getitem__(self, index: int) -> ConversationSample:
        record = self.records[index]
        cached = self._token_cache.get(index)
        if cached is None:
            image = self.load_image(index) if "image" in record else None
            input_ids, labels, pixel_values = self._encode(index, image)
            if self.cache_tokens:
                self._token_cache[index] = (input_ids, labels)
        else:  # the text was tokenised before; only the image may need processing
            input_ids, labels = cached
            if index in self._pixel_cache:
                pixel_values = self._pixel_cache[index]
            elif "image" in record:
                image = self.load_image(index)
                pixel_values = self.processor.image_processor(image, return_tensors="pt")["pixel_values"]
            else:
                pixel_values = None
        if self.cache_images:
            self._pixel_cache[index] = pixel_values
        return ConversationSample(input_ids, labels, pixel_values, str(_record_id(record, index)))

    def _encode(
        self, index: int, image: Image.Image | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render, tokenise (expanding <image>) and label one sample: input_ids, labels [T], pixels."""
        record = self.records[index]
        where = self._where(self.positions[index], record, "conversations")
        text, spans = self.render(record["conversations"])
        bos = self.tokenizer.bos_token
        encoded = self.processor(
            text=text,
            images=image,
            return_offsets_mapping=True,
            add_special_tokens=not (bos and text.startswith(bos)),  # the template may write BOS itself
            return_tensors="pt",
        )
        input_ids = encoded["input_ids"][0]  # [T]
        offsets = encoded["offset_mapping"][0]  # [T, 2], in the text after <image> was expanded
        num_image_tokens = int((input_ids == self.image_token_id).sum())
        if image is not None and num_image_tokens == 0:
            raise ValueError(where + f"the processor did not expand {IMAGE_TOKEN} into image tokens")
        # Answers come after the one <image>, so the expansion moved each of them by the same amount.
        shift = (num_image_tokens - 1) * len(IMAGE_TOKEN) if image is not None else 0
        labels = answer_labels(input_ids, offsets, torch.tensor(spans) + shift)
        length = input_ids.numel()
        if self.max_length is not None and length > self.max_length:
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
            if int((input_ids == self.image_token_id).sum()) != num_image_tokens:
                raise ValueError(
                    where + f"{length} tokens; cutting them at max_length {self.max_length} would cut the "
                    "image tokens: raise max_length"
                )
        if not bool((labels != IGNORE_INDEX).any()):
            raise ValueError(
                where + f"{length} tokens; cut at max_length {self.max_length} no answer token is left to "
                "learn from: raise max_length"
            )
        return input_ids, labels, encoded["pixel_values"] if image is not None else None


def _record_id(record: Any, index: int) -> Any:
    return record.get("id", f"#{index}") if isinstance(record, dict) else f"#{index}"


@dataclass(frozen=True)
class ConversationCollator:
    """Pads a list of `ConversationSample`s into a batch (right padding for training by default):
    input_ids / attention_mask / labels [B, T] and pixel_values [I, 3, H, W] for the I samples that
    have an image (None if none has)."""

    pad_token_id: int
    padding_side: str = "right"

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    def __call__(self, samples: list[ConversationSample]) -> dict[str, torch.Tensor | None]:
        ids = [s.input_ids for s in samples]
        input_ids = pad_sequence(
            ids, batch_first=True, padding_value=self.pad_token_id, padding_side=self.padding_side
        )  # [B, T]
        attention_mask = pad_sequence(
            [torch.ones_like(i) for i in ids],
            batch_first=True,
            padding_value=0,
            padding_side=self.padding_side,
        )
        labels = pad_sequence(
            [s.labels for s in samples],
            batch_first=True,
            padding_value=IGNORE_INDEX,
            padding_side=self.padding_side,
        )
        images = [s.pixel_values for s in samples if s.pixel_values is not None]
        pixel_values = torch.cat(images) if images else None  # [I, 3, H, W]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": pixel_values,
        }
