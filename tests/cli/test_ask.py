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
    assert result["budget"] == 0.75 and len(result["plan"]["layers"]) == 6
    assert result["flops"]["llm"] == pytest.approx(0.75 * result["full_flops"]["llm"])
    assert result["flops"]["total"] > result["flops"]["llm"] > 0


def test_ask_prints_a_readable_summary(model_dir, capsys):
    folder, image = model_dir
    assert main(["ask", "--image", str(image), "--question", "what shape ?", "--model", str(folder),
                 "--max-new-tokens", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "answer:" in out and "layers run:" in out and "8/8" in out


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
    assert names == ["tiny-llava", "tiny-adallava-l", "tiny-adallava-h"]


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
