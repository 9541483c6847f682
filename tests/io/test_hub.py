"""Model folders and names (issue 14): bundled names accepted everywhere, the `scheduler_trained`
mark through init / train / convert / load, and clean, fast refusals (missing folders, processors,
devices) before anything loads or touches the Hub."""

import json
import shutil
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from adallava import AdaLlava, AdaptiveConfig
from adallava.cli import main
from adallava.inference.answering import answer_batch, encode
from adallava.inference.prompts import chat_prompt
from adallava.io.hub import BUNDLED_DIR, bundled_models, check_device, load_model
from adallava.testing import tiny_llava

pytestmark = pytest.mark.skipif(
    not all(info.available for info in bundled_models()), reason="bundled models not built (make bundled)"
)
SCENE = "examples/scene.png"


def saved_flag(folder) -> object:
    return json.loads((folder / "adaptive_config.json").read_text()).get("scheduler_trained", "absent")


def test_from_pretrained_accepts_a_bundled_name():
    # Bug caught: AdaLlava.from_pretrained("tiny-adallava-l") refused the bundled name.
    by_name = AdaLlava.from_pretrained("tiny-adallava-l")
    by_path = AdaLlava.from_pretrained(BUNDLED_DIR / "tiny-adallava-l")
    for a, b in zip(by_name.state_dict().values(), by_path.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert by_name.scheduler_trained and AdaLlava.from_pretrained("tiny-adallava-h").scheduler_trained
    with pytest.raises(FileNotFoundError, match="from_base"):  # the base model has no adaptive files
        AdaLlava.from_pretrained("tiny-llava")
    with pytest.raises(FileNotFoundError, match="neither a folder nor a bundled model name"):
        AdaLlava.from_pretrained("tiny-adallava-x")


def test_init_takes_a_bundled_base_and_marks_the_scheduler_untrained(tmp_path, capsys):
    # Bug caught: `adallava init --base tiny-llava` refused the name; an init'd (random) scheduler
    # then ran budgets as if trained, three runs giving three answers.
    out = tmp_path / "init"
    assert main(["init", "--base", "tiny-llava", "--switches", "layer", "--out", str(out)]) == 0
    assert "untrained" in capsys.readouterr().out
    assert saved_flag(out) is False
    reference = LlavaForConditionalGeneration.from_pretrained(BUNDLED_DIR / "tiny-llava").state_dict()
    model = AdaLlava.from_pretrained(out)
    assert not model.scheduler_trained
    for key, value in LlavaForConditionalGeneration.from_pretrained(out).state_dict().items():
        assert torch.equal(value, reference[key]), key  # the base weights travel unchanged
    processor = AutoProcessor.from_pretrained(out)
    image = Image.open(SCENE).convert("RGB")
    prompt = encode(processor, chat_prompt(processor, "What shape is red?"), [image])
    with pytest.raises(ValueError, match=r"no trained scheduler.*adallava train.*scheduler_trained"):
        answer_batch(model, processor, [prompt], [0.75], [3])
    [answer] = answer_batch(model, processor, [prompt], [None], [3])  # no budget: the full model
    assert answer.budget is None and answer.plan["layers"] == list(range(16))


def test_train_saves_the_scheduler_as_trained(tmp_path):
    # Bug caught: a trained checkpoint saying "scheduler_trained": false (or nothing), so its budgets
    # would be refused after `adallava train`.
    from accelerate import Accelerator

    from adallava.train.recipe import save_model

    model = AdaLlava.from_base(tiny_llava(seed=0), AdaptiveConfig())
    assert not model.scheduler_trained  # from_base: a fresh scheduler
    processor = AutoProcessor.from_pretrained(BUNDLED_DIR / "tiny-llava")
    run = SimpleNamespace(accelerator=Accelerator(cpu=True), model=model, args=SimpleNamespace(lora=False),
                          processor=processor)  # fmt: skip
    save_model(run, tmp_path / "trained")
    assert saved_flag(tmp_path / "trained") is True
    assert AdaLlava.from_pretrained(tmp_path / "trained").scheduler_trained


def test_convert_marks_the_official_scheduler_trained(tmp_path):
    # Bug caught: a converted official checkpoint (a trained scheduler) loading as untrained.
    from adallava.io.convert_official import _save_adaptive

    source = AdaLlava.from_base(tiny_llava(seed=1), AdaptiveConfig())
    state = {f"latency_encoder.{k}": v for k, v in source.latency_encoder.state_dict().items()}
    state |= {f"scheduler.{k}": v for k, v in source.scheduler.state_dict().items()}
    _save_adaptive(tiny_llava(seed=1), AdaptiveConfig(), state, tmp_path / "converted")
    assert saved_flag(tmp_path / "converted") is True
    loaded = AdaLlava.from_pretrained(tmp_path / "converted")
    assert loaded.scheduler_trained
    assert torch.equal(loaded.scheduler.head.weight, source.scheduler.head.weight)


def test_a_checkpoint_without_the_mark_loads_untrained(tmp_path):
    # Bug caught: an old checkpoint (no "scheduler_trained" key) silently treated as trained, or a
    # malformed value accepted. The decision (docstring of from_pretrained): absent means false.
    folder = tmp_path / "old"
    shutil.copytree(BUNDLED_DIR / "tiny-adallava-l", folder)
    config = json.loads((folder / "adaptive_config.json").read_text())
    del config["scheduler_trained"]
    (folder / "adaptive_config.json").write_text(json.dumps(config))
    assert not AdaLlava.from_pretrained(folder).scheduler_trained
    (folder / "adaptive_config.json").write_text(json.dumps({**config, "scheduler_trained": "yes"}))
    with pytest.raises(ValueError, match="scheduler_trained must be true or false, got 'yes'"):
        AdaLlava.from_pretrained(folder)


def test_plot_attention_accepts_a_bundled_name(tmp_path):
    # Bug caught: `adallava plot --attention tiny-adallava-l` refused the bundled name.
    argv = ["plot", "--attention", "tiny-adallava-l", "--image", SCENE, "--question",
            "What color is the circle?", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "attention.png").stat().st_size > 0


def test_train_refuses_a_missing_model_folder_at_once_without_the_hub(tmp_path, capsys, monkeypatch):
    # Bug caught: `adallava train` with a missing `model:` folder retried the Hugging Face Hub for
    # ~2.5 minutes and ended in a traceback.
    import adallava.train.recipe as recipe

    def no_hub(*args, **kwargs):
        raise AssertionError("the processor was looked up (the Hub) before the folders were checked")

    monkeypatch.setattr(recipe.AutoProcessor, "from_pretrained", no_hub)
    data = tmp_path / "data.json"
    data.write_text("[]")
    base = ["train", "--stage", "adaptive", "--data", str(data), "--output-dir", str(tmp_path / "out")]
    start = time.perf_counter()
    assert main([*base, "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "neither a folder nor a bundled model name" in err and "Traceback" not in err
    assert main([*base, "--model", "tiny-llava", "--processor", str(tmp_path / "nope")]) == 2
    assert "--processor" in capsys.readouterr().err
    assert time.perf_counter() - start < 10


def test_a_folder_without_processor_files_is_refused_with_what_to_do(tmp_path):
    # Bug caught: load_model on a `save_pretrained` folder (no processor) ending in a traceback.
    AdaLlava.from_pretrained("tiny-adallava-l").save_pretrained(tmp_path / "out")
    message = r"no processor files.*processor\.save_pretrained.*--processor"
    with pytest.raises(FileNotFoundError, match=message):
        load_model(tmp_path / "out")
    model, processor = load_model(tmp_path / "out", processor="tiny-adallava-l")
    assert model.scheduler_trained and processor.tokenizer.unk_token == "<unk>"  # the mark travels with it


def test_check_device_refuses_what_this_torch_cannot_use(monkeypatch):
    # Bug caught: `--device cuda` on a CPU-only torch ending in a traceback deep in `.to()`.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_device("cpu")
    with pytest.raises(ValueError, match=r"--device 'cuda'.*CUDA cannot be used.*--device cpu"):
        check_device("cuda")
    with pytest.raises(ValueError, match="--device 'gpu' is not a torch device"):
        check_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"only 1 CUDA device\(s\), cuda:0 to cuda:0"):
        check_device("cuda:3")
    check_device("cuda:0")
