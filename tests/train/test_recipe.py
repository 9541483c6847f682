"""The training recipe on a tiny offline world: both stages learn, resume is exact, outputs load."""

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

import adallava.train.recipe as recipe
from adallava import AdaLlava, AdaptiveConfig, ExecutionPlan
from adallava.cli.commands import train as train_command
from adallava.core.settings import field_help
from adallava.testing import tiny_inputs
from adallava.train.args import TrainArgs
from adallava.train.recipe import EpochSampler, lr_factor, merge_lora, sample_budgets, train
from tests.data.test_conversation import make_world

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("train-world"), n=24)


@pytest.fixture(scope="module")
def base_dir(world, tmp_path_factory):
    """A base model trained for a few steps (the starting point of the adaptive stage)."""
    model_dir, data = world
    out = tmp_path_factory.mktemp("base")
    train(args(model_dir, data, out, stage="base", max_steps=12))
    return out


def args(model, data, out, **overrides) -> TrainArgs:
    values = dict(stage="adaptive", model=str(model), data=str(data), output_dir=str(out), batch_size=8,
                  learning_rate=3e-3, scheduler_learning_rate=1e-2, warmup_steps=2, log_every=1, save_every=0,
                  progress_bar=False, cache_tokens=True)  # fmt: skip
    return TrainArgs(**(values | overrides))


def logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_base_stage_lowers_the_loss_and_saves_a_hf_llava(base_dir, world):
    log = logged(base_dir)
    losses = [r["loss"] for r in log]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < losses[0] - 0.5
    assert [r["step"] for r in log] == list(range(1, 13))
    assert {"epoch", "lr_model", "grad_norm", "samples_per_s", "elapsed_s"} <= set(log[0])
    assert log[0]["lr_model"] == pytest.approx(1.5e-3) and log[2]["lr_model"] == pytest.approx(
        3e-3
    )  # warm-up
    model = LlavaForConditionalGeneration.from_pretrained(base_dir)
    start = LlavaForConditionalGeneration.from_pretrained(world[0])
    vision = "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    trained, initial = model.state_dict(), start.state_dict()
    assert not torch.equal(trained[vision], initial[vision])  # from scratch: the vision tower trains too
    assert AutoProcessor.from_pretrained(base_dir).tokenizer.eos_token == "</s>"
    assert TrainArgs.load(base_dir / "train_args.yaml").stage == "base"


def test_adaptive_stage_learns_and_loads_as_adallava(base_dir, world, tmp_path):
    _, data = world
    out = tmp_path / "ada"
    result = train(args(base_dir, data, out, max_steps=10))
    losses = [r["loss"] for r in logged(out)]
    assert sum(losses[-3:]) / 3 < losses[0]
    assert result.steps == 10 and result.seconds_per_step > 0
    first = logged(out)[0]
    assert first["lr_model"] == pytest.approx(1.5e-3) and first["lr_scheduler"] == pytest.approx(5e-3)
    model = AdaLlava.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.adaptive.switches == "layer" and model.num_prefix == 2
    base = LlavaForConditionalGeneration.from_pretrained(base_dir).state_dict()
    trained = model.llava.state_dict()
    vision = [k for k in base if k.startswith("model.vision_tower.")]
    assert vision and all(torch.equal(trained[k], base[k]) for k in vision)  # frozen by default
    assert not torch.equal(trained["lm_head.weight"], base["lm_head.weight"])
    inputs = processor(
        text="USER: <image>\nwhat colour is the square ? ASSISTANT:", images=_red(), return_tensors="pt"
    )
    with torch.no_grad():
        out_full, out_half = model(**inputs, budget=1.0), model(**inputs, budget=0.5)
    assert out_full.plan.layers.sum() == 4 and out_half.plan.layers.sum() == 2


def test_resume_continues_bit_identically(base_dir, world, tmp_path, monkeypatch):
    """6 steps straight == 3 steps, a crash after the checkpoint, then --resume latest for 3 more:
    identical weights (model and scheduler) and identical logged losses."""
    _, data = world
    common = dict(max_steps=6, gradient_accumulation_steps=2, batch_size=4, lr_schedule="cosine")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(args(base_dir, data, straight, **common))

    save = recipe.save_checkpoint

    def save_then_crash(run, step):
        save(run, step)
        raise KeyboardInterrupt  # the job is killed right after its checkpoint

    monkeypatch.setattr(recipe, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(args(base_dir, data, resumed, save_every=3, **common))
    monkeypatch.undo()
    assert [r["step"] for r in logged(resumed)] == [1, 2, 3]
    train(args(base_dir, data, resumed, save_every=3, resume="latest", **common))

    assert [r["loss"] for r in logged(resumed)] == [r["loss"] for r in logged(straight)]
    for name in ("model.safetensors", "adaptive.safetensors"):
        expected, got = load_file(straight / name), load_file(resumed / name)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
    checkpoint = resumed / "checkpoint-3"
    assert AdaLlava.from_pretrained(checkpoint).num_layers == 4  # checkpoints load on their own too
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["global_batch"] == 8


def test_resume_refuses_a_different_batch_geometry(base_dir, world, tmp_path):
    _, data = world
    out = tmp_path / "run"
    train(args(base_dir, data, out, max_steps=4, save_every=2, batch_size=4))
    with pytest.raises(ValueError, match="global_batch 4, this run has 8"):
        train(args(base_dir, data, out, max_steps=4, batch_size=8, resume=str(out / "checkpoint-2")))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(args(base_dir, data, tmp_path / "empty", resume="latest"))


def test_lora_trains_adapters_and_saves_merged_weights(base_dir, world, tmp_path):
    pytest.importorskip("peft", reason="LoRA needs PEFT (pip install peft)")
    _, data = world
    out = tmp_path / "lora"
    train(args(base_dir, data, out, max_steps=6, lora=True, lora_r=4, lora_alpha=8))
    losses = [r["loss"] for r in logged(out)]
    assert sum(losses[-2:]) / 2 < losses[0]
    model = AdaLlava.from_pretrained(out)  # plain weights: no PEFT needed to load
    assert type(model.text_model.layers[0].self_attn.q_proj) is torch.nn.Linear
    base = LlavaForConditionalGeneration.from_pretrained(base_dir).state_dict()
    trained = model.llava.state_dict()
    q_proj = "model.language_model.layers.3.self_attn.q_proj.weight"
    assert not torch.equal(trained[q_proj], base[q_proj])  # the adapter was merged in
    embed = "model.language_model.embed_tokens.weight"
    assert torch.equal(trained[embed], base[embed]) and torch.equal(
        trained["lm_head.weight"], base["lm_head.weight"]
    )


def test_merge_lora_matches_the_adapted_model(base_llava):
    peft = pytest.importorskip("peft", reason="LoRA needs PEFT (pip install peft)")
    torch.manual_seed(0)
    model = AdaLlava.from_base(LlavaForConditionalGeneration(base_llava.config), AdaptiveConfig()).eval()
    config = peft.LoraConfig(r=2, lora_alpha=6, target_modules=recipe.LORA_TARGETS, init_lora_weights=False)
    peft.inject_adapter_in_model(config, model.text_model)
    inputs = tiny_inputs(base_llava.config, [5, 3], seed=1)
    plan = ExecutionPlan.from_layers(8, [[0, 1, 2, 3, 5, 7]] * 2)
    with torch.no_grad():
        expected = model(**inputs, plan=plan).logits
    state = merge_lora(model, model.state_dict())
    plain = AdaLlava.from_base(LlavaForConditionalGeneration(base_llava.config), AdaptiveConfig()).eval()
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs, plan=plan).logits, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "options, saved",
    [({"switches": "head", "rank": 2}, {"switches": "head", "rank": 2}),
     ({"scheduler": "deterministic", "latency_loss_weight": 0.5}, {"scheduler": "deterministic"})],
)  # fmt: skip
def test_other_adaptive_kinds_train_and_continue(base_dir, world, tmp_path, options, saved):
    _, data = world
    out = tmp_path / "kind"
    train(args(base_dir, data, out, max_steps=2, adaptive=options))
    adaptive = AdaLlava.from_pretrained(out).adaptive
    assert all(getattr(adaptive, k) == v for k, v in saved.items())
    train(args(out, data, tmp_path / "more", max_steps=1, adaptive=options))  # continue from the AdaLlava dir
    with pytest.raises(ValueError, match="was trained with adaptive[.]"):
        train(args(out, data, tmp_path / "other", max_steps=1))


def test_cli_reads_yaml_and_flags_override_it(world, tmp_path, capsys):
    model_dir, data = world
    out = tmp_path / "cli"
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "stage": "base",
                "model": str(model_dir),
                "data": str(data),
                "output_dir": str(out),
                "learning_rate": "1e-3",
                "batch_size": 4,
                "max_steps": 50,
                "progress_bar": False,
            }  # fmt: skip
        )
    )
    parser = argparse.ArgumentParser(prog="adallava")
    train_command.add_parser(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(
        ["train", "--config", str(config), "--max-steps", "2", "--learning-rate", "2e-3"]
    )
    assert parsed.func(parsed) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    saved = TrainArgs.load(out / "train_args.yaml")
    assert (saved.max_steps, saved.learning_rate, saved.batch_size) == (2, 2e-3, 4)
    assert (out / "model.safetensors").is_file()


def test_cli_errors_name_the_file_and_key(world, tmp_path, monkeypatch, capsys):
    import adallava.cli.command

    monkeypatch.setattr(adallava.cli.command, "COMMANDS", ["train"])
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"stage: base\nmodel: {world[0]}\ndata: {world[1]}\noutput_dir: {tmp_path}\nepochs: -1\n"
    )
    assert adallava.cli.main(["train", "--config", str(config)]) == 2
    assert "adallava train: error: --epochs must be > 0; got -1" in capsys.readouterr().err


def test_train_args_validate_and_name_the_flag(tmp_path):
    required = dict(stage="base", model="m", data="d.json", output_dir="o")
    assert TrainArgs(**required).lr_schedule == "constant_with_warmup"
    adaptive = TrainArgs(**(required | {"stage": "adaptive"}))
    assert (adaptive.lr_schedule, adaptive.train_vision_tower) == ("cosine", False)
    for bad, message in [({"learning_rate": 0.0}, "--learning-rate must be > 0"),
                         ({"stage": "middle"}, "--stage must be one of base, adaptive"),
                         ({"warmup_steps": 10, "warmup_ratio": 0.1}, "not both"),
                         ({"lora": True}, "--lora applies to the adaptive stage"),
                         ({"mixed_precision": "fp8"}, "--mixed-precision must be one of")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            TrainArgs(**(required | bad))
    config = tmp_path / "c.yaml"
    config.write_text("stage: base\nmodel: m\ndata: d\noutput_dir: o\nlearning_rat: 1e-5\n")
    with pytest.raises(ValueError, match="unknown key 'learning_rat'; did you mean 'learning_rate'"):
        TrainArgs.load(config)
    config.write_text("stage: base\nmodel: m\ndata: d\n")
    with pytest.raises(ValueError, match="missing required key.*output_dir"):
        TrainArgs.load(config)
    with pytest.raises(ValueError, match="--batch-size expects an integer"):
        TrainArgs.load(None, **required, batch_size="many")
    assert field_help(TrainArgs)["seed"].startswith("Seeds the data order")


def test_example_configs_are_valid():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.name for f in files} >= {
        "tiny-base.yaml",
        "tiny-adaptive-l.yaml",
        "llava-7b-adaptive-lora.yaml",
    }
    for path in files:
        TrainArgs.load(path)
    for path in sorted((CONFIGS / "accelerate").glob("*.yaml")):
        assert "distributed_type" in yaml.safe_load(path.read_text())


def test_schedules_budgets_and_data_order():
    assert [lr_factor(s, 10, 2, "constant_with_warmup") for s in (0, 1, 5, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(2, 10, 2, "cosine") == 1.0 and lr_factor(10, 10, 2, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5)
    budgets = sample_budgets(4000, 16, 32, torch.Generator().manual_seed(0))
    assert set((budgets * 32).round().long().tolist()) == set(range(16, 33))  # the full model included
    sampler = EpochSampler(50, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] == orders[2] != orders[1] and sorted(orders[1]) == list(range(50))


def test_mixed_precision_falls_back_to_fp32_on_cpu(capsys):
    assert recipe._mixed_precision("bf16", torch.device("cpu")) == "no"
    assert "training on the CPU in fp32" in capsys.readouterr().out


def _red():
    from PIL import Image

    return Image.new("RGB", (32, 32), (220, 30, 30))
