"""LLaVA conversation data: prompts, answer-only labels, loud errors for bad records, the collator.

Also home of `make_world`, the tiny offline setup (model folder, processor, images, LLaVA JSON) that
tests/train/test_recipe.py trains on.
"""

import json
import logging
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoProcessor, CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

from adallava.data.conversation import ConversationCollator, ConversationDataset, answer_labels
from adallava.modules.latency import IGNORE_INDEX
from adallava.testing import IMAGE_TOKEN_ID, tiny_llava

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
# ids 0..3 are what adallava.testing's configs expect: pad, bos, eos, image.
WORDS = ["<pad>", "<s>", "</s>", "<image>", "<unk>", "USER:", "ASSISTANT:", "what", "colour", "is", "the",
         "square", "?", "say", "hello", "again", *COLOURS]  # fmt: skip
IMAGE_TOKENS = 16  # 32 x 32 pixels, 8 x 8 patches, CLS dropped
# LLaVA-1.5's format as a chat template on string content (answers end with </s>).
LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# llava-hf's style: typed content parts, images first, answers end with a space and no </s>.
PARTS_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}"
    "{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def make_processor(chat_template: str | None = LLAVA_TEMPLATE) -> LlavaProcessor:
    """A word-level tokenizer, a 32x32 CLIP image processor and a LlavaProcessor (offline)."""
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    images = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    return LlavaProcessor(
        image_processor=images,
        tokenizer=fast,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )


def colour_record(i: int, colour: str) -> dict:
    return {
        "id": f"s{i}",
        "image": f"images/{i}.png",
        "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is the square ?"},
            {"from": "gpt", "value": colour},
        ],
    }


TEXT_ONLY = {
    "id": "text",
    "conversations": [
        {"from": "human", "value": "say hello"},
        {"from": "gpt", "value": "hello"},
        {"from": "human", "value": "say hello again"},
        {"from": "gpt", "value": "hello hello"},
    ],
}


def make_world(root: Path, n: int = 12, seed: int = 0, layers: int = 4) -> tuple[Path, Path]:
    """A tiny random Llava + processor folder and a LLaVA JSON of n colour questions and one text-only
    two-turn sample. Returns (model folder, data file)."""
    root.mkdir(parents=True, exist_ok=True)
    model = tiny_llava(
        seed=seed,
        num_layers=layers,
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        vision_hidden=32,
    )
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    make_processor().save_pretrained(model_dir)
    rng = random.Random(seed)
    (root / "images").mkdir(exist_ok=True)
    records = []
    for i in range(n):
        colour = rng.choice(sorted(COLOURS))
        Image.new("RGB", (32, 32), COLOURS[colour]).save(root / "images" / f"{i}.png")
        records.append(colour_record(i, colour))
    records.append(TEXT_ONLY)
    data = root / "train.json"
    data.write_text(json.dumps(records))
    return model_dir, data


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), n=4)


def tokens(processor, ids: torch.Tensor) -> list[str]:
    return processor.tokenizer.convert_ids_to_tokens(ids.tolist())


def answer_tokens(processor, sample) -> list[str]:
    return tokens(processor, sample.input_ids[sample.labels != IGNORE_INDEX])


@pytest.mark.parametrize("prompt_format", ["auto", "llava_v1"])
def test_labels_keep_only_the_answers_and_their_eos(world, prompt_format):
    model_dir, data = world
    processor = AutoProcessor.from_pretrained(model_dir)
    dataset = ConversationDataset(data, None, processor, prompt_format=prompt_format)
    image_sample = dataset[0]
    words = [t for t in tokens(processor, image_sample.input_ids) if t != "<image>"]
    assert words == ["<s>", "USER:", "what", "colour", "is", "the", "square", "?", "ASSISTANT:",
                     dataset.records[0]["conversations"][1]["value"], "</s>"]  # fmt: skip
    assert int((image_sample.input_ids == IMAGE_TOKEN_ID).sum()) == IMAGE_TOKENS
    assert answer_tokens(processor, image_sample) == [dataset.records[0]["conversations"][1]["value"], "</s>"]
    assert image_sample.pixel_values.shape == (1, 3, 32, 32)
    # Labels are the input ids where kept (the model shifts them), so positions line up.
    kept = image_sample.labels != IGNORE_INDEX
    assert torch.equal(image_sample.labels[kept], image_sample.input_ids[kept])

    text_sample = dataset[len(dataset) - 1]  # two turns, no image
    assert text_sample.pixel_values is None
    assert answer_tokens(processor, text_sample) == ["hello", "</s>", "hello", "hello", "</s>"]
    assert tokens(processor, text_sample.input_ids) == ["<s>", "USER:", "say", "hello", "ASSISTANT:", "hello",
        "</s>", "USER:", "say", "hello", "again", "ASSISTANT:", "hello", "hello", "</s>"]  # fmt: skip


def test_template_without_eos_gets_one_after_each_answer(world, tmp_path):
    _, data = world
    dataset = ConversationDataset(data, None, make_processor(PARTS_TEMPLATE))
    text, spans = dataset.render(TEXT_ONLY["conversations"])
    assert text == "USER: say hello ASSISTANT: hello</s> USER: say hello again ASSISTANT: hello hello</s> "
    assert [text[a:b] for a, b in spans] == [" hello</s>", " hello hello</s>"]
    assert answer_tokens(dataset.processor, dataset[len(dataset) - 1]) == [
        "hello",
        "</s>",
        "hello",
        "hello",
        "</s>",
    ]
    image_sample = dataset[0]
    assert answer_tokens(dataset.processor, image_sample)[-1] == "</s>"
    assert int((image_sample.input_ids == IMAGE_TOKEN_ID).sum()) == IMAGE_TOKENS


def test_system_prompt_is_never_learned(world):
    _, data = world
    processor = make_processor(None)
    dataset = ConversationDataset(data, None, processor, system_prompt="say hello")
    sample = dataset[0]
    assert tokens(processor, sample.input_ids)[:4] == ["<s>", "say", "hello", "USER:"]
    assert len(answer_tokens(processor, sample)) == 2


def test_answer_labels_ignore_tokens_added_by_the_tokenizer():
    ids = torch.tensor([1, 5, 6, 7, 2])
    offsets = torch.tensor([[0, 0], [0, 5], [6, 10], [11, 14], [14, 18]])  # BOS has no characters
    labels = answer_labels(ids, offsets, torch.tensor([[10, 18]]))
    assert labels.tolist() == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, 2]


def bad_records() -> list[tuple[str, object, str]]:
    """(id, record, the field its error must name)."""
    good = colour_record(0, "red")

    def edit(change) -> dict:
        record = json.loads(json.dumps(good))
        change(record["conversations"], record)
        return record

    def value(turn: int, text):
        return lambda turns, record: turns[turn].update({"value": text})

    return [
        ("no-conversations", {"id": "no-conversations", "image": "images/0.png"}, "conversations"),
        ("s0", edit(lambda turns, r: turns[1].update({"from": "human"})), "conversations[1].from"),
        ("s0", edit(lambda turns, r: turns[0].pop("value")), "conversations[0].value"),
        ("s0", edit(value(1, 3)), "conversations[1].value"),
        ("s0", edit(lambda turns, r: r.update({"image": "images/missing.png"})), "image"),
        ("s0", edit(lambda turns, r: r.update({"image": ["images/0.png", "images/1.png"]})), "image"),
        ("s0", edit(value(0, "<image> <image> what")), "conversations[0].value"),
        ("s0", edit(value(0, "what colour")), "conversations[0].value"),
        ("s0", edit(lambda turns, r: r.pop("image")), "conversations[0].value"),
        ("s0", edit(lambda turns, r: turns.pop()), "conversations"),
        ("s0", edit(lambda turns, r: turns.append({"from": "human", "value": "what"})), "conversations[2]"),
        ("s0", edit(value(1, "<image>")), "conversations[1].value"),
    ]


@pytest.mark.parametrize("ident, record, field", bad_records())
def test_bad_records_raise_naming_file_sample_and_field(world, tmp_path, ident, record, field):
    model_dir, data = world
    records = json.loads(data.read_text())
    records.insert(2, record)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError) as error:
        ConversationDataset(path, data.parent, AutoProcessor.from_pretrained(model_dir))
    message = str(error.value)
    assert str(path) in message and "sample 2" in message and repr(ident) in message
    assert f"field '{field}'" in message


def test_skip_bad_counts_and_logs(world, tmp_path, caplog):
    model_dir, data = world
    records = json.loads(data.read_text())
    records[1]["conversations"][0]["from"] = "gpt"
    records.append(
        {"id": "lost", "image": "images/nowhere.png", "conversations": records[0]["conversations"]}
    )
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with caplog.at_level(logging.WARNING, logger="adallava.data.conversation"):
        dataset = ConversationDataset(
            path, data.parent, AutoProcessor.from_pretrained(model_dir), skip_bad=True
        )
    assert len(dataset) == len(records) - 2
    assert [(s.index, s.id) for s in dataset.skipped] == [(1, "s1"), (len(records) - 1, "lost")]
    assert "skipped 2 of" in caplog.text and "nowhere.png" in caplog.text


def test_jsonl_errors_name_the_line(world, tmp_path):
    model_dir, data = world
    records = json.loads(data.read_text())
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"train.jsonl: line 3: not valid JSON"):
        ConversationDataset(path, data.parent, AutoProcessor.from_pretrained(model_dir))
    records[1]["conversations"][1]["from"] = "assistant"
    path.write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(ValueError, match=r"sample 1 \(line 2\), id 's1', field 'conversations\[1\].from'"):
        ConversationDataset(path, data.parent, AutoProcessor.from_pretrained(model_dir))


def test_max_length_cuts_text_but_never_the_image_or_every_answer(world):
    model_dir, data = world
    processor = AutoProcessor.from_pretrained(model_dir)
    long_enough = ConversationDataset(data, None, processor, max_length=8)
    sample = long_enough[len(long_enough) - 1]  # text-only: cut after the first answer
    assert sample.input_ids.numel() == 8 and answer_tokens(processor, sample) == ["hello", "</s>"]
    with pytest.raises(ValueError, match=r"id 's0'.*cut the image tokens"):
        long_enough[0]
    with pytest.raises(ValueError, match=r"id 'text'.*no answer token"):
        ConversationDataset(data, None, processor, max_length=4)[len(long_enough) - 1]


@pytest.mark.parametrize("cache_images", [False, True])
def test_token_and_image_caches_give_the_same_samples(world, cache_images):
    model_dir, data = world
    processor = AutoProcessor.from_pretrained(model_dir)
    plain = ConversationDataset(data, None, processor)
    cached = ConversationDataset(data, None, processor, cache_tokens=True, cache_images=cache_images)
    for index in (0, len(plain) - 1):
        first, second, reference = cached[index], cached[index], plain[index]
        assert index in cached._token_cache and (index in cached._pixel_cache) == cache_images
        for sample in (first, second):
            assert torch.equal(sample.input_ids, reference.input_ids)
            assert torch.equal(sample.labels, reference.labels)
            if reference.pixel_values is None:
                assert sample.pixel_values is None
            else:
                assert torch.equal(sample.pixel_values, reference.pixel_values)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_and_stacks_only_real_images(world, side):
    model_dir, data = world
    dataset = ConversationDataset(data, None, AutoProcessor.from_pretrained(model_dir))
    samples = [dataset[len(dataset) - 1], dataset[0], dataset[1]]
    batch = ConversationCollator(pad_token_id=0, padding_side=side)(samples)
    width = max(s.input_ids.numel() for s in samples)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, width)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)  # the text-only row has none
    assert torch.equal(batch["pixel_values"][0], samples[1].pixel_values[0])
    for row, sample in enumerate(samples):
        n = sample.input_ids.numel()
        real = slice(0, n) if side == "right" else slice(width - n, width)
        assert torch.equal(batch["input_ids"][row, real], sample.input_ids)
        assert torch.equal(batch["labels"][row, real], sample.labels)
        assert int(batch["attention_mask"][row].sum()) == n and bool(batch["attention_mask"][row, real].all())
        assert bool((batch["labels"][row][batch["attention_mask"][row] == 0] == IGNORE_INDEX).all())
    only_text = ConversationCollator(pad_token_id=0)([samples[0]])
    assert only_text["pixel_values"] is None
