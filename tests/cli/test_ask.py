"""`adallava ask`, `adallava models` and model names: answers, costs and clear errors."""

import json

import pytest
import torch
from PIL import Image

from adallava import AdaLlava, AdaptiveConfig
from adallava.cli import main
from adallava.data.tiny_model import build_tiny_llava
from adallava.io.hub import load_model, resolve_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ask")
    base_dir = build_tiny_llava(root / "base", seed=0)
    from transformers import LlavaForConditionalGeneration

    model = AdaLlava.from_base(LlavaForConditionalGeneration.from_pretrained(base_dir), AdaptiveConfig())
    model.scheduler_trained = True  # these tests exercise the mechanics: a random scheduler stands in
    out = root / "adaptive"
    model.save_pretrained(out)
    for file in base_dir.iterdir():  # processor, tokenizer and chat template travel with the model
        if not (out / file.name).exists():
            (out / file.name).write_bytes(file.read_bytes())
    image = root / "scene.png"
    Image.new("RGB", (48, 48), (200, 30, 30)).save(image)
    return out, image


def test_ask_json_reports_answer_plan_and_flops(model_dir, capsys):
    folder, image = model_dir
    question = "what color is the circle ?"
    code = main(["ask", "--image", str(image), "--question", question, "--model", str(folder),
                 "--budget", "0.75", "--json", "--max-new-tokens", "3"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"answer", "budget", "plan", "flops", "full_flops", "ms"}
    assert result["budget"] == 0.75 and len(result["plan"]["layers"]) == 12  # 0.75 of 16 layers
    assert result["flops"]["llm"] == pytest.approx(0.75 * result["full_flops"]["llm"])
    assert result["flops"]["total"] > result["flops"]["llm"] > 0


def test_ask_prints_a_readable_summary(model_dir, capsys):
    folder, image = model_dir
    assert main(["ask", "--image", str(image), "--question", "what shape ?", "--model", str(folder),
                 "--max-new-tokens", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "answer:" in out and "layers run:" in out and "16/16" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "missing.png"], "no such file"),
        (["--budget", "0.3"], "outside the allowed range [0.5, 1]"),
        (["--budget", "fast"], "not a FLOPs amount"),
        (["--model", "no-such-model"], "neither a folder nor a bundled model name"),
    ],
)
def test_ask_errors_are_clear(model_dir, capsys, args, message):
    folder, image = model_dir
    base = {"--image": str(image), "--question": "what ?", "--model": str(folder)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    assert main(["ask", *[x for kv in base.items() for x in kv]]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_image_is_a_clear_error(model_dir, tmp_path, capsys):
    folder, _ = model_dir
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    assert main(["ask", "--image", str(bad), "--question", "what ?", "--model", str(folder)]) == 2
    assert "not an image PIL can read" in capsys.readouterr().err


def test_models_lists_the_bundled_names(capsys):
    assert main(["models", "--json"]) == 0
    names = [row["name"] for row in json.loads(capsys.readouterr().out)]
    assert names == ["tiny-llava", "tiny-adallava-l", "tiny-adallava-h", "tiny-adallava-l-prumerge"]


def test_load_model_wraps_plain_llava_folders(model_dir, tmp_path):
    folder, _ = model_dir
    model, processor = load_model(folder)
    assert isinstance(model, AdaLlava) and processor.tokenizer is not None
    assert resolve_model(folder) == folder
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(tmp_path)
    torch.testing.assert_close(
        model.scheduler.head.weight, AdaLlava.from_pretrained(folder).scheduler.head.weight
    )


SCENE = "examples/scene.png"


def test_ask_without_budget_on_a_base_model_answers_with_the_full_hf_model(capsys):
    # Bug caught: `ask --model tiny-llava` ran the base model with a random, untrained scheduler (and a
    # latency token it never saw): three runs, three answers, one empty.
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from adallava.inference.prompts import chat_prompt
    from adallava.io.hub import BUNDLED_DIR

    question = "What color is the circle?"
    argv = ["ask", "--image", SCENE, "--question", question, "--model", "tiny-llava", "--max-new-tokens", "4"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["budget"] is None and result["plan"]["layers"] == list(range(16))
    folder = BUNDLED_DIR / "tiny-llava"
    hf = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(images=[Image.open(SCENE).convert("RGB")], text=[chat_prompt(processor, question)],
                       return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        ids = hf.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert result["answer"] == expected.strip()  # HF's own model, greedy
    assert main(argv) == 0
    assert "budget: none (the full model)" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["tiny-llava", "init"])
def test_a_budget_without_a_trained_scheduler_is_refused(model, tmp_path, capsys):
    # Bug caught: a budget on a base model or an `adallava init` output ran an untrained scheduler.
    if model == "init":
        model = str(tmp_path / "i")
        assert main(["init", "--base", "tiny-llava", "--switches", "layer", "--out", model]) == 0
    capsys.readouterr()
    argv = ["ask", "--image", SCENE, "--question", "What shape is red?", "--model", model]
    assert main([*argv, "--budget", "0.75"]) == 2
    err = capsys.readouterr().err
    assert f"model {model!r} has no trained scheduler" in err and "adallava train" in err
    assert "Traceback" not in err
    assert main(argv) == 0  # without --budget: the full model
    assert "(16/16)" in capsys.readouterr().out


def test_ask_reports_words_the_tokenizer_does_not_know(capsys):
    # Bug caught: unknown words (and capitalised known ones: "HOW") silently read as <unk>.
    base = ["ask", "--image", SCENE, "--model", "tiny-adallava-l", "--max-new-tokens", "3"]
    assert main([*base, "--question", "HOW many Zebras are there?", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unknown_words"] == ["Zebras"]  # "HOW" folds to "How"
    assert main([*base, "--question", "What color is the circle?", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unknown_words"] == []
    assert main([*base, "--question", "what colour is the zebra ?"]) == 0
    assert "unknown words: colour, zebra" in capsys.readouterr().out


def test_a_model_folder_without_its_processor_is_a_clear_error(tmp_path, capsys):
    # Bug caught: `ask --model out/` after `model.save_pretrained(out)` alone ended in a traceback.
    AdaLlava.from_pretrained("tiny-adallava-l").save_pretrained(tmp_path / "out")
    argv = ["ask", "--image", SCENE, "--question", "What color is the circle?", "--model",
            str(tmp_path / "out"), "--budget", "0.75", "--json", "--max-new-tokens", "3"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no processor files" in err and "processor.save_pretrained(" in err and "--processor" in err
    assert "Traceback" not in err
    assert main([*argv, "--processor", "tiny-adallava-l"]) == 0
    with_processor = json.loads(capsys.readouterr().out)
    assert main([*argv[:6], "tiny-adallava-l", *argv[7:]]) == 0  # the bundled model itself
    assert with_processor["answer"] == json.loads(capsys.readouterr().out)["answer"]
