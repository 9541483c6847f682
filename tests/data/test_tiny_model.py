"""The tiny LLaVA builder: tokenizer coverage, processor and chat template, offline loading, forward."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from adallava.cli.commands import world as world_command
from adallava.data.tiny_model import (
    BOS_ID,
    EOS_ID,
    IMAGE_ID,
    PAD_ID,
    UNK_ID,
    TinyLlavaSpec,
    build_tiny_llava,
    build_tokenizer,
    world_words,
)
from adallava.data.world import FAMILIES, generate_world, load_heldout, render, world_vocabulary
from adallava.data.world.questions import CategoryStats, make_question, prompt_for
from adallava.data.world.scene import sample_scene, stream


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-world")
    generate_world(root / "train", split="train", seed=0, n=200, progress=False)
    generate_world(root / "test", split="test", seed=0, n=30, progress=False)
    return root / "train", root / "test"


@pytest.fixture(scope="module")
def model_dir(worlds, tmp_path_factory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava") / "model", world=worlds[0], seed=0)


@pytest.fixture(scope="module")
def loaded(model_dir):
    with pytest.MonkeyPatch.context() as patch:  # everything must load without the Hub
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        processor = AutoProcessor.from_pretrained(model_dir)
        model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    return processor, model


def _messages(question: str, answer: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def test_tokenizer_covers_every_question_and_answer_of_every_family():
    tokenizer = build_tokenizer(world_vocabulary())
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<s>", "</s>", "<unk>", "<image>"]) == [0, 1, 2, 3, 4]
    rng = stream(0, "train", "coverage")
    stats = CategoryStats.of(sample_scene(rng, "train") for _ in range(200))
    texts = []
    for family in FAMILIES:
        for _ in range(150):
            scene = sample_scene(rng, "train", family.shape_counts, family.letter_counts)
            qa = make_question(family, scene, rng, stats)
            if qa is not None:
                texts += [prompt_for(family.benchmark, qa), qa.answer]
    assert len(texts) > 3000
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert UNK_ID not in ids, (text, tokenizer.convert_ids_to_tokens(ids))


def test_tokenizer_covers_generated_worlds_and_decodes_answers_exactly(worlds):
    tokenizer = build_tokenizer(world_vocabulary())
    for world in worlds:
        words = world_words(world)
        ids = tokenizer(" ".join(sorted(words)), add_special_tokens=False)["input_ids"]
        assert UNK_ID not in ids
    for question in load_heldout(worlds[1]):
        ids = tokenizer(question.answer, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == question.answer


def test_instruction_sentences_are_single_tokens():
    tokenizer = build_tokenizer(world_vocabulary())
    prompt = "Is the red square left of the circle?\nAnswer the question using a single word or phrase."
    tokens = tokenizer.tokenize(f"USER: <image>\n{prompt} ASSISTANT:")
    assert tokens[:2] == ["USER:", "<image>"] and tokens[-2:] == [
        "Answer the question using a single word or phrase.",
        "ASSISTANT:",
    ]


def test_build_rejects_a_world_with_unknown_words(worlds, tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_tiny_llava(tmp_path / "m", vocabulary=["red", "square"], world=worlds[0])


def test_spec_validation():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        TinyLlavaSpec(image_size=50)
    with pytest.raises(ValueError, match="num_heads"):
        TinyLlavaSpec(hidden_size=130)
    assert TinyLlavaSpec().image_tokens == 36  # 96 px at patch 16: the v3 world's images


def test_folder_loads_offline_with_the_expected_configuration(loaded, model_dir):
    processor, model = loaded
    config = model.config
    assert config.image_token_id == IMAGE_ID == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-1, "default")
    assert config.image_seq_length == 36
    text = config.text_config
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size, text.num_attention_heads) == (
        16,
        96,
        256,
        4,
    )
    assert (text.pad_token_id, text.bos_token_id, text.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert config.vision_config.num_hidden_layers == 2 and config.vision_config.hidden_size == 128
    embed = model.get_input_embeddings().weight
    assert embed.shape[0] == len(processor.tokenizer) and 0.06 < embed.std().item() < 0.10  # init 0.08
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    assert sum(p.numel() for p in model.parameters()) < 3_000_000


def test_processor_and_chat_template_give_one_token_per_patch_and_the_model_runs(loaded):
    processor, model = loaded
    scene = sample_scene(stream(0, "test", "forward"), "test")
    image = render(scene)
    prompt = processor.apply_chat_template(_messages("What color is the circle?"), add_generation_prompt=True)
    assert prompt == "USER: <image>\nWhat color is the circle? ASSISTANT:"
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    ids = inputs["input_ids"][0]
    assert ids[0].item() == BOS_ID
    assert (ids == IMAGE_ID).sum().item() == (96 // 16) ** 2
    assert inputs["pixel_values"].shape == (1, 3, 96, 96)
    with torch.no_grad():
        out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape == (1, len(ids), len(processor.tokenizer))
    assert torch.isfinite(out.loss)
    generated = model.generate(**inputs, max_new_tokens=3)
    assert generated.shape[1] <= len(ids) + 3 and IMAGE_ID not in generated[0, len(ids) :].tolist()


def test_chat_template_closes_the_answer_with_eos(loaded):
    processor, _ = loaded
    text = processor.apply_chat_template(_messages("What is in the center?", "red square"))
    assert text == "USER: <image>\nWhat is in the center? ASSISTANT: red square</s>"
    ids = processor.tokenizer(text.replace("<image>", "<image>" * 9))["input_ids"]
    assert processor.tokenizer.convert_ids_to_tokens(ids[-4:]) == ["ASSISTANT:", "red", "square", "</s>"]
    string = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nHi?"}], add_generation_prompt=True
    )
    assert string == "USER: <image>\nHi? ASSISTANT:"


def test_build_is_deterministic_per_seed(tmp_path):
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    a = build_tiny_llava(tmp_path / "a", seed=1, spec=TinyLlavaSpec(text_layers=2))
    b = build_tiny_llava(tmp_path / "b", seed=1, spec=TinyLlavaSpec(text_layers=2))
    c = build_tiny_llava(tmp_path / "c", seed=2, spec=TinyLlavaSpec(text_layers=2))
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert digest(a / name) == digest(b / name), name
    assert digest(a / "model.safetensors") != digest(c / "model.safetensors")
    state = torch.random.get_rng_state()
    build_tiny_llava(tmp_path / "d", seed=3, spec=TinyLlavaSpec(text_layers=2))
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched


def test_build_model_command(worlds, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="adallava")
    world_command.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli-model"
    args = parser.parse_args(
        ["world", "build-model", "--world", str(worlds[0]), "--out", str(out), "--layers", "4"]
    )
    assert args.func(args) == 0
    model = LlavaForConditionalGeneration.from_pretrained(out)
    assert model.config.text_config.num_hidden_layers == 4
    assert str(out) in capsys.readouterr().out


def test_tokenizer_folds_case_onto_its_vocabulary():
    # Bug caught: capitalised or upper-case forms of known words ("HOW", "Circle") read as <unk>, or a
    # plain lower-casing merging the vocabulary's own pairs ("Is" / "is") into one id.
    tokenizer = build_tokenizer(["How", "is", "Is", "circle"])
    text = "HOW how How is Is IS iS circle Circle CIRCLE zebra"
    expected = ["How", "How", "How", "is", "Is", "is", "is", "circle", "circle", "circle", "<unk>"]  # by hand
    assert tokenizer.tokenize(text) == expected


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-adallava-l", "tiny-adallava-h"])
def test_bundled_tokenizers_fold_case_and_read_known_text_as_before(name, worlds):
    # Bug caught: the normaliser added to the bundled tokenizer.json changing what the trained models
    # read (their answers) for text they already knew, or missing from a bundled model.
    import json

    from tokenizers import Tokenizer

    from adallava.io.hub import BUNDLED_DIR

    saved = json.loads((BUNDLED_DIR / name / "tokenizer.json").read_text(encoding="utf-8"))
    new = Tokenizer.from_str(json.dumps(saved))
    old = Tokenizer.from_str(json.dumps({**saved, "normalizer": None}))  # as the bundled models trained
    readme = "USER: <image>\nWhat color is the circle?\nAnswer the question using a single word or phrase."
    readme += " ASSISTANT:"
    texts = [readme] + [t for q in load_heldout(worlds[1]) for t in (q.prompt, q.answer)]
    for text in texts:
        assert new.encode(text).ids == old.encode(text).ids, text
    assert new.encode("WHAT Color is THE circle?").ids == old.encode("What color is the circle?").ids
    built = build_tokenizer(world_vocabulary()).backend_tokenizer
    assert json.loads(new.to_str())["normalizer"] == json.loads(built.to_str())["normalizer"]
