"""core.settings and cli.flags: one mechanism from settings dataclasses to flags, YAML and back."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from adallava.cli import flags
from adallava.core import settings
from adallava.core.config import AdaptiveConfig
from adallava.eval.args import EvalArgs
from adallava.serve.settings import Settings
from adallava.train.args import MOVED, TrainArgs

REQUIRED = {"stage": "adaptive", "model": "m", "data": "d.json", "output_dir": "o"}


@dataclass(frozen=True)
class Inner:
    """A nested group."""

    level: int = 1
    """How deep."""
    mode: Literal["a", "b"] = "a"
    """Which mode."""


@dataclass(frozen=True)
class Toy:
    """One field of every kind the mechanism handles."""

    name: str
    """A required text."""
    flag_on: bool = False
    """A switch."""
    count: int = 3
    """An integer."""
    ratio: float = 0.5
    """A number."""
    limit: int | None = None
    """An optional integer."""
    colour: Literal["red", "green", "none"] | None = None
    """A choice whose names include 'none'."""
    weights: tuple[float, ...] = (1.0, 2.0)
    """A list of numbers."""
    tags: tuple[Literal["x", "y", "z"], ...] = ()
    """A list of choices."""
    inner: Inner = field(default_factory=Inner)
    """The nested group."""


def parser_for(cls: type, **options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    flags.add_arguments(parser, cls, **options)
    return parser


def parse(cls: type, argv: list[str], config=None, **options):
    return flags.from_namespace(cls, parser_for(cls, **options).parse_args(argv), config, moved=MOVED)


def test_each_field_kind_becomes_a_typed_flag():
    # Bug caught: a kind parsed as the wrong type (`--count 3` left a string, a bool that needs a value,
    # a list not split on commas, a nested field with no flags).
    argv = ["--name", "n", "--flag-on", "--count", "7", "--ratio", "1e-3", "--limit", "none",
            "--weights", "0.5, 1", "--tags", "x,z", "--inner.level", "4", "--inner.mode", "b"]  # fmt: skip
    toy = parse(Toy, argv)
    assert toy == Toy(name="n", flag_on=True, count=7, ratio=1e-3, limit=None, weights=(0.5, 1.0),
                      tags=("x", "z"), inner=Inner(level=4, mode="b"))  # fmt: skip
    assert type(toy.count) is int and type(toy.ratio) is float
    assert parse(Toy, ["--name", "n", "--no-flag-on", "--limit", "5"]) == Toy(name="n", limit=5)


def test_a_choice_named_none_is_not_empty():
    # Bug caught: `--colour none` / `--token-selection none` read as None ("the model's default") instead
    # of the choice "none" (turn token selection off).
    assert parse(Toy, ["--name", "n", "--colour", "none"]).colour == "none"
    eval_args = parse(EvalArgs, ["--data", "d", "--out", "o", "--token-selection", "none"])
    assert eval_args.token_selection == "none"
    assert parse(EvalArgs, ["--data", "d", "--out", "o"]).token_selection is None


def test_defaults_then_yaml_then_flags(tmp_path):
    # Bug caught: argparse defaults overriding the YAML file (a flag the user did not type wins), or the
    # YAML file overriding a typed flag.
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**REQUIRED, "learning_rate": "1e-3", "batch_size": 4}))
    args = parse(TrainArgs, ["--batch-size", "2"], config)
    assert (args.learning_rate, args.batch_size) == (1e-3, 2)  # YAML over default, flag over YAML
    assert args.seed == 0 and args.adaptive == AdaptiveConfig()  # untouched defaults stay


def test_nested_yaml_and_dotted_flags_merge_key_by_key(tmp_path):
    # Bug caught: a flag for one nested key (--adaptive.rank) replacing the whole YAML `adaptive:` block, so
    # its other keys (switches: head) silently fall back to their defaults.
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**REQUIRED, "adaptive": {"switches": "head", "rank": 8, "tau": "2"}}))
    args = parse(TrainArgs, ["--adaptive.rank", "2", "--adaptive.token-selection", "prumerge"], config)
    assert args.adaptive == AdaptiveConfig(switches="head", rank=2, tau=2.0, token_selection="prumerge")
    assert TrainArgs.load(config, adaptive={"rank": 4}).adaptive.switches == "head"  # Python overrides too


def test_every_adaptive_config_field_is_settable_for_training():
    # Bug caught: TrainArgs copying AdaptiveConfig's fields by hand again, so new ones (mlp_groups,
    # selection, token_selection) cannot be set for training.
    values = {"switches": "head", "num_prefix_layers": 3, "rank": 2, "mlp_groups": 4, "tau": 1.5,
              "latency_frequencies": 16, "selection": "official", "token_selection": "prumerge+",
              "scheduler": "deterministic", "latency_loss_weight": 0.25}  # fmt: skip
    assert set(values) == {f.name for f in dataclasses.fields(AdaptiveConfig)}
    argv = [f"--adaptive.{k.replace('_', '-')}={v}" for k, v in values.items()]
    args = parse(TrainArgs, [*argv, *(f"--{k.replace('_', '-')}={v}" for k, v in REQUIRED.items())])
    assert args.adaptive == AdaptiveConfig(**values)


def test_a_bad_value_names_the_flag_and_the_allowed_values(tmp_path):
    # Bug caught: a typo in a choice failing deep inside the model code, or with a message that names
    # neither the flag to fix nor what it may be.
    with pytest.raises(argparse.ArgumentError, match=r"--adaptive\.switches.*'layer', 'head'"):
        parser_for(TrainArgs).parse_args(["--adaptive.switches", "heads"])
    with pytest.raises(
        argparse.ArgumentError, match="--methods/--method: must be among adaptive, early-exit"
    ):
        parser_for(EvalArgs, aliases={"methods": ["--method"]}).parse_args(["--method", "adaptive,oracle"])
    with pytest.raises(argparse.ArgumentError, match="--count: expects an integer, got 'many'"):
        parser_for(Toy).parse_args(["--count", "many"])
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**REQUIRED, "adaptive": {"selection": "best"}}))
    with pytest.raises(
        ValueError, match=r"--adaptive\.selection must be one of adallava, official; got 'best'"
    ):
        TrainArgs.load(config)
    with pytest.raises(ValueError, match=r"--adaptive\.\*: AdaptiveConfig\.rank must be >= 1"):
        TrainArgs.load(None, **REQUIRED, adaptive={"rank": 0})
    with pytest.raises(ValueError, match="--mixed-precision must be one of no, bf16, fp16; got 'fp8'"):
        TrainArgs(**REQUIRED, mixed_precision="fp8")


def test_an_old_flat_file_or_flag_names_the_new_nested_keys(tmp_path, capsys):
    # Bug caught: a pre-nesting YAML file (switches: head at the top) failing with a bare "unknown key",
    # or worse, training AdaLLaVA-L when the user asked for head switches.
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump({**REQUIRED, "switches": "head", "scheduler_kind": "deterministic"}))
    with pytest.raises(ValueError) as error:
        TrainArgs.load(config)
    assert str(config) in str(error.value)
    assert "switches -> adaptive.switches" in str(error.value)
    assert "scheduler_kind -> adaptive.scheduler" in str(error.value)
    parser = argparse.ArgumentParser(prog="t")
    flags.add_arguments(parser, TrainArgs, moved=MOVED)
    with pytest.raises(SystemExit):
        parser.parse_args(["--scheduler-kind", "deterministic"])
    assert "--scheduler-kind is now --adaptive.scheduler" in capsys.readouterr().err
    assert "--rank" not in parser.format_help()  # the old flags stay hidden


def test_help_shows_every_setting_with_its_docstring(capsys):
    # Bug caught: a setting missing from --help, or shown without help because its docstring was not
    # found (e.g. a field added without one, or help read from a second, stale source).
    for cls in (TrainArgs, EvalArgs, Settings, AdaptiveConfig):
        docs = settings.field_help(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
    text = " ".join(parser_for(TrainArgs).format_help().split())
    for path, setting in settings.paths(TrainArgs).items():
        assert setting.flag in text
        doc = settings.field_help(AdaptiveConfig if path.startswith("adaptive.") else TrainArgs)
        assert " ".join(doc[setting.name].split()[:4]) in text, path
    serve = " ".join(parser_for(Settings).format_help().split())
    assert "--max-batch-size INT most requests run together in one generate call (default: 8)" in serve


def test_commands_build_the_same_objects_as_python():
    # Bug caught: a command dropping or renaming a setting on the way from flags to the dataclass.
    assert parse(Settings, []) == Settings()
    assert parse(Settings, ["--batch-wait-ms", "2.5", "--max-prompt-tokens", "100"]) == Settings(
        batch_wait_ms=2.5, max_prompt_tokens=100
    )
    eval_args = parse(
        EvalArgs, ["--data", "d", "--out", "o", "--benchmarks", "pope,mme", "--budgets", "0.5,1"]
    )
    assert eval_args == EvalArgs(data="d", out="o", benchmarks=("pope", "mme"), budgets=(0.5, 1.0))


def test_saved_train_args_load_back(tmp_path):
    # Bug caught: train_args.yaml written in a form (flat, or with Python objects) that load() refuses.
    args = TrainArgs(**REQUIRED, adaptive=AdaptiveConfig(switches="head", rank=2, mlp_groups=3))
    path = tmp_path / "train_args.yaml"
    path.write_text(args.to_yaml())
    assert TrainArgs.load(path) == args
    assert yaml.safe_load(path.read_text())["adaptive"]["mlp_groups"] == 3
