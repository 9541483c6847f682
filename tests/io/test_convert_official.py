"""Converting official AdaLLaVA checkpoints, and `adallava init`.

A tiny checkpoint is written here with the official key names and config (LLaVA-repo format,
`model_type: ada_llava_llama`) from random weights, with a word-level tokenizer and a tiny CLIP tower
folder; it is converted through the CLI, and the result is checked against the official formulas:
weights, plans (selection rule on the scheduler's logits), base logits against transformers' own Llava,
the latency encoder, the tokenizer and processor.
"""

import argparse
import json
import math

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.nn import functional as F
from transformers import AutoProcessor, CLIPVisionConfig, CLIPVisionModel, LlavaForConditionalGeneration

from adallava import AdaLlava
from adallava.cli.commands import convert as convert_command
from adallava.cli.commands import init as init_command
from adallava.io.convert_official import convert_official
from adallava.io.official_format import padded_vocab_size
from adallava.io.official_processor import VICUNA_V1_SYSTEM
from adallava.io.official_weights import extend_vocabulary, map_official_key, map_vision_tower_state_dict
from adallava.testing import tiny_llava

N, P, HEADS, HIDDEN, INTERMEDIATE, VOCAB = 6, 3, 4, 64, 102, 40
VISION_HIDDEN, IMAGE_SIZE, PATCH = 48, 32, 8
BUDGETS = [0.5, 0.6, 0.75, 0.85, 1.0]


# ---- building an official-format checkpoint --------------------------------------------------------


def official_config(scheduler_type: str, rank: int | None, dtype: str) -> dict:
    config = {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["AdaLlavaLlamaForCausalLM"],
        "model_type": "ada_llava_llama",
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": N,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "vocab_size": VOCAB,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": dtype,
        "transformers_version": "4.37.2",
        "image_aspect_ratio": "pad",
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
        "mm_hidden_size": VISION_HIDDEN,
        "mm_patch_merge_type": "flat",
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "num_prefix_layers": P,
        "scheduler_type": scheduler_type,
        "token_selecting": "none",
    }
    if rank is not None:
        config["scheduler_rank"] = rank
    return config


def official_weights(scheduler_type: str, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    state = {
        "model.embed_tokens.weight": rand(VOCAB, HIDDEN, scale=1.0),
        "lm_head.weight": rand(VOCAB, HIDDEN),
    }
    for i in range(N):
        layer = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"{layer}self_attn.{name}.weight"] = rand(HIDDEN, HIDDEN)
        state[f"{layer}mlp.gate_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        state[f"{layer}mlp.up_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        state[f"{layer}mlp.down_proj.weight"] = rand(HIDDEN, INTERMEDIATE)
        state[f"{layer}input_layernorm.weight"] = 1 + rand(HIDDEN)
        state[f"{layer}post_attention_layernorm.weight"] = 1 + rand(HIDDEN)
        inv_freq = torch.rand(HIDDEN // HEADS // 2, generator=gen)
        state[f"{layer}self_attn.rotary_emb.inv_freq"] = inv_freq  # an old HF buffer, dropped on conversion
    state["model.norm.weight"] = 1 + rand(HIDDEN)
    state["model.mm_projector.0.weight"] = rand(HIDDEN, VISION_HIDDEN)
    state["model.mm_projector.0.bias"] = rand(HIDDEN)
    state["model.mm_projector.2.weight"] = rand(HIDDEN, HIDDEN)
    state["model.mm_projector.2.bias"] = rand(HIDDEN)
    switches = (N - P) * (2 * HEADS if scheduler_type == "H" else 1)
    state["scheduler.mlp_head.weight"] = rand(switches, HIDDEN, scale=1.0)
    state["scheduler.mlp_head.bias"] = rand(switches)
    state["scheduler.scheduler_up_proj.net.0.weight"] = 1 + rand(256)
    state["scheduler.scheduler_up_proj.net.0.bias"] = rand(256)
    state["scheduler.scheduler_up_proj.net.1.weight"] = rand(HIDDEN, 256)
    state["scheduler.scheduler_up_proj.net.1.bias"] = rand(HIDDEN)
    state["scheduler.scheduler_up_proj.net.3.weight"] = rand(HIDDEN, HIDDEN)
    state["scheduler.scheduler_up_proj.net.3.bias"] = rand(HIDDEN)
    return state


def write_tokenizer(directory) -> None:
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",  # as LLaVA's training sets it
        "model_max_length": 2048,
        "padding_side": "right",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


def write_official(directory, scheduler_type="L", rank=None, weights_format="safetensors", dtype="float32"):
    """An official AdaLLaVA checkpoint folder; returns its state dict."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(official_config(scheduler_type, rank, dtype)))
    state = official_weights(scheduler_type, getattr(torch, dtype))
    keys = sorted(state)
    halves = {"model-00001-of-00002": keys[: len(keys) // 2], "model-00002-of-00002": keys[len(keys) // 2 :]}
    if weights_format == "safetensors":  # two shards and an index, as HF's Trainer writes them
        weight_map = {}
        for stem, part in halves.items():
            save_file({k: state[k].contiguous() for k in part}, str(directory / f"{stem}.safetensors"))
            weight_map |= {k: f"{stem}.safetensors" for k in part}
        index = {"metadata": {}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    else:  # the older format: one pickled shard, read with weights_only=True
        torch.save(state, directory / "pytorch_model.bin")
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": 4096})
    )
    write_tokenizer(directory)
    return state


def write_vision_tower(directory) -> dict[str, torch.Tensor]:
    """A tiny CLIPVisionModel folder with an openai-style preprocessor_config.json."""
    torch.manual_seed(5)
    config = CLIPVisionConfig(
        hidden_size=VISION_HIDDEN,
        intermediate_size=2 * VISION_HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=VISION_HIDDEN,
    )
    tower = CLIPVisionModel(config)
    tower.save_pretrained(directory)
    preprocessor = {
        "crop_size": IMAGE_SIZE,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": IMAGE_SIZE,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return {k: v.clone() for k, v in tower.state_dict().items()}


def cli(module, argv: list[str]) -> int:
    """Run one subcommand through its own `add_parser`, as `adallava` does."""
    parser = argparse.ArgumentParser(prog="adallava")
    module.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def vision_tower(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip")
    return directory, write_vision_tower(directory)


# L: float32 safetensors shards, converted with --dtype auto. H: an fp16 .bin shard, converted to float32.
CASES = {
    "L-safetensors": {
        "scheduler_type": "L",
        "rank": None,
        "weights_format": "safetensors",
        "dtype": "float32",
    },
    "H-bin": {"scheduler_type": "H", "rank": 2, "weights_format": "bin", "dtype": "float16"},
}
CONVERT_DTYPE = {"L-safetensors": "auto", "H-bin": "float32"}


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, tmp_path_factory, vision_tower):
    case = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    official = write_official(root / "official", **case)
    out = root / "converted"
    argv = ["convert", "--from-official", str(root / "official"), "--vision-tower", str(vision_tower[0])]
    code = cli(convert_command, [*argv, "--out", str(out), "--dtype", CONVERT_DTYPE[request.param]])
    assert code == 0
    model = AdaLlava.from_pretrained(out).eval()
    return case, official, vision_tower[1], out, model


def tiny_batch(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.full(((IMAGE_SIZE // PATCH) ** 2,), VOCAB)  # <image> = the first new id
    text = torch.randint(3, VOCAB, (rows, 7), generator=gen)
    input_ids = torch.cat([torch.ones(rows, 1, dtype=torch.long), image.expand(rows, -1), text], dim=1)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(rows, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen),
    }


# ---- the official rules, written plainly --------------------------------------------------------------


def official_units(budget: float, total: int, prefix: int) -> int:
    return max(0, math.floor(total * budget) - prefix)


def official_layer_rule(logits: torch.Tensor, n: int) -> list[bool]:
    """L: the n upper layers with the largest logits."""
    best = sorted(range(len(logits)), key=lambda i: -logits[i].item())[:n]
    return [i in best for i in range(len(logits))]


def official_head_rule(logits: torch.Tensor, n: int, heads: int, rank: int) -> list[list[bool]]:
    """H: per unit, the best untaken element over all upper layers names a layer; there the top `rank`
    untaken heads and top `rank` untaken MLP groups are taken. logits [upper, 2 * heads]."""
    layers = logits.shape[0]
    taken = [[False] * (2 * heads) for _ in range(layers)]
    for _ in range(n):
        best, best_layer = float("-inf"), None
        for layer in range(layers):
            for j in range(2 * heads):
                if not taken[layer][j] and logits[layer, j].item() > best:
                    best, best_layer = logits[layer, j].item(), layer
        for part in (range(heads), range(heads, 2 * heads)):
            free = sorted((j for j in part if not taken[best_layer][j]), key=lambda j: -logits[best_layer, j])
            for j in free[:rank]:
                taken[best_layer][j] = True
    return taken


def official_latency_token(n: int, total: int, prefix: int, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """q = n / (Nu - Pu + 1); sin/cos of 2 pi q at 128 frequencies; LayerNorm - Linear - GELU - Linear."""
    w = {k.removeprefix("scheduler.scheduler_up_proj.net."): v.float() for k, v in state.items()}
    q = n / (total - prefix + 1)
    freqs = 1 / (10000 ** (torch.arange(128) / 128))
    angles = 2 * math.pi * q * freqs
    features = torch.cat([angles.sin(), angles.cos()])
    x = F.layer_norm(features, (256,), w["0.weight"], w["0.bias"], eps=1e-5)
    x = F.gelu(F.linear(x, w["1.weight"], w["1.bias"]))
    return F.linear(x, w["3.weight"], w["3.bias"])


def budget_units(case) -> tuple[int, int]:
    if case["scheduler_type"] == "L":
        return N, P
    return N * HEADS // case["rank"], P * HEADS // case["rank"]


# ---- conversion --------------------------------------------------------------------------------------


def test_converted_config(converted):
    case, _, _, out, model = converted
    adaptive = model.adaptive
    assert adaptive.switches == {"L": "layer", "H": "head"}[case["scheduler_type"]]
    assert adaptive.num_prefix_layers == P and adaptive.selection == "official"
    if case["scheduler_type"] == "H":
        assert adaptive.rank == case["rank"] and adaptive.mlp_groups == HEADS
    config = model.config
    assert config.image_token_id == VOCAB and config.text_config.pad_token_id == VOCAB + 1
    assert config.text_config.vocab_size == 64  # 40 + <image> + <pad>, padded to a multiple of 64
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.image_seq_length == (IMAGE_SIZE // PATCH) ** 2
    assert model.llava.generation_config.max_length == 4096  # the checkpoint's generation config
    assert model.llava.generation_config.pad_token_id == VOCAB + 1


def test_weights_are_the_official_ones(converted):
    _, official, tower, out, _ = converted
    hf = LlavaForConditionalGeneration.from_pretrained(out).state_dict()
    for key, tensor in official.items():
        if key.endswith("inv_freq") or key.startswith("scheduler."):
            continue
        part, ours = map_official_key(key)
        assert part == "llava"
        expected = tensor.float()
        got = hf[ours][: expected.shape[0]] if "embed_tokens" in key or "lm_head" in key else hf[ours]
        assert torch.equal(got, expected), key
    for key, tensor in tower.items():
        if not key.endswith("position_ids"):
            assert torch.equal(hf[f"model.vision_tower.{key.removeprefix('vision_model.')}"], tensor), key
    embed = hf["model.language_model.embed_tokens.weight"]
    new_rows = embed[VOCAB:]
    assert embed.shape == (64, HIDDEN) and hf["lm_head.weight"].shape == (64, HIDDEN)
    # New rows: near the mean of the old ones (covariance 1e-5 Sigma), all distinct.
    mean = official["model.embed_tokens.weight"].float().mean(0)
    assert (new_rows - mean).abs().max() < 0.05 and len({tuple(r.tolist()) for r in new_rows}) == 64 - VOCAB


def test_plans_follow_the_official_rule(converted):
    case, _, _, _, model = converted
    total, prefix = budget_units(case)
    inputs = {k: v[:1].expand(len(BUDGETS), *v.shape[1:]) for k, v in tiny_batch(1).items()}
    with torch.no_grad():
        out = model(**inputs, budget=BUDGETS)
    for row, budget in enumerate(BUDGETS):
        n = official_units(budget, total, prefix)
        logits = out.scheduler_logits[row]
        if case["scheduler_type"] == "L":
            assert out.plan.layers[row, P:].tolist() == official_layer_rule(logits, n), budget
        else:
            expected = official_head_rule(logits.view(N - P, 2 * HEADS), n, HEADS, case["rank"])
            got = torch.cat([out.plan.heads[row, P:], out.plan.mlp[row, P:]], dim=-1)
            assert got.tolist() == expected, budget
            assert int(out.plan.heads[row, P:].sum()) == n * case["rank"]
    assert out.plan.layers[:, :P].all()


def test_base_logits_equal_transformers_llava(converted):
    _, _, _, out, model = converted
    reference = LlavaForConditionalGeneration.from_pretrained(out).eval()
    inputs = tiny_batch(2, seed=1)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference(**inputs).logits)


def test_latency_encoder_is_the_official_formula(converted):
    case, official, _, _, model = converted
    total, prefix = budget_units(case)
    units = torch.arange(total - prefix + 1)
    with torch.no_grad():
        ours = model.latency_encoder(units, total, prefix)
    expected = torch.stack([official_latency_token(int(n), total, prefix, official) for n in units])
    # fp16 weights are upcast exactly; float32 arithmetic in both
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(
        model.scheduler.head.weight, official["scheduler.mlp_head.weight"].float()
    ) and torch.equal(model.scheduler.head.bias, official["scheduler.mlp_head.bias"].float())


def test_tokenizer_and_processor_load_offline(converted):
    _, _, _, out, _ = converted
    processor = AutoProcessor.from_pretrained(out)
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [VOCAB, VOCAB + 1]
    assert tokenizer.pad_token == "<pad>" and len(tokenizer) == VOCAB + 2
    assert processor.image_processor.do_pad  # LLaVA-1.5's image_aspect_ratio "pad"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w4 w5"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == f"{VICUNA_V1_SYSTEM} USER: <image>\nw4 w5 ASSISTANT:"  # LLaVA's vicuna_v1
    messages += [{"role": "assistant", "content": "w6"}, {"role": "user", "content": "w7"}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == f"{VICUNA_V1_SYSTEM} USER: <image>\nw4 w5 ASSISTANT: w6</s>USER: w7 ASSISTANT:"
    from PIL import Image

    image = Image.new("RGB", (40, 20), (200, 10, 10))
    batch = processor(images=image, text="<image>\nw4 w5", return_tensors="pt")
    assert int((batch["input_ids"] == VOCAB).sum()) == (IMAGE_SIZE // PATCH) ** 2
    assert batch["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


# ---- pure helpers ------------------------------------------------------------------------------------


def test_key_mapping_table():
    assert map_official_key("model.layers.3.self_attn.q_proj.weight") == (
        "llava",
        "model.language_model.layers.3.self_attn.q_proj.weight",
    )
    assert map_official_key("model.mm_projector.2.bias") == (
        "llava",
        "model.multi_modal_projector.linear_2.bias",
    )
    assert map_official_key("scheduler.mlp_head.weight") == ("adaptive", "scheduler.head.weight")
    assert map_official_key("scheduler.scheduler_up_proj.net.3.bias") == (
        "adaptive",
        "latency_encoder.net.3.bias",
    )
    assert map_official_key("model.image_newline") is None
    clip_model = {
        "vision_model.encoder.x": 1,
        "text_model.y": 2,
        "logit_scale": 3,
        "vision_model.embeddings.position_ids": 4,
    }
    assert map_vision_tower_state_dict(clip_model) == {"model.vision_tower.encoder.x": 1}
    assert map_vision_tower_state_dict({"embeddings.a": 1}) == {"model.vision_tower.embeddings.a": 1}
    assert padded_vocab_size(32000) == 32064 and padded_vocab_size(40) == 64 and padded_vocab_size(62) == 64


def test_new_vocabulary_rows_have_the_scaled_covariance():
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(400, 3, generator=gen) @ torch.tensor([[2.0, 0, 0], [0.5, 1, 0], [0, 0, 0.1]])
    grown, head = extend_vocabulary(embed, torch.zeros(400, 3), 400 + 20000, gen)
    assert torch.equal(grown[:400], embed) and torch.equal(head[:400], torch.zeros(400, 3))
    new = grown[400:].double()
    mean = embed.double().mean(0)
    expected = torch.cov(embed.double().T, correction=0) * 1e-5  # 1e-5 Sigma
    whitened = (new - mean) @ torch.linalg.inv(torch.linalg.cholesky(expected)).T  # ~ N(0, I) if so
    torch.testing.assert_close(torch.cov(whitened.T), torch.eye(3, dtype=torch.float64), rtol=0, atol=0.05)
    torch.testing.assert_close(whitened.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=0.05)


# ---- bad inputs --------------------------------------------------------------------------------------


@pytest.fixture
def official_dir(tmp_path):
    write_official(tmp_path / "official")
    return tmp_path / "official"


def edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"num_prefix_layers": None}, ValueError, "num_prefix_layers"),
        ({"scheduler_type": "X"}, ValueError, "scheduler_type must be one of"),
        ({"scheduler_type": "H"}, ValueError, "scheduler_rank"),
        ({"model_type": "llava_llama"}, ValueError, "adallava init"),
        ({"mm_projector_type": "linear"}, ValueError, "mm_projector_type"),
        ({"token_selecting": "magic"}, ValueError, "token_selecting"),
    ],
)
def test_bad_config_is_named(official_dir, vision_tower, tmp_path, changes, error, message):
    edit_config(official_dir, **changes)
    with pytest.raises(error, match=message):
        convert_official(official_dir, vision_tower[0], tmp_path / "out")


def test_scheduler_weights_that_do_not_fit_the_config(official_dir, vision_tower, tmp_path):
    edit_config(official_dir, scheduler_type="H", scheduler_rank=2)  # L weights, H config
    with pytest.raises(ValueError, match=r"scheduler.mlp_head.weight is \(3, 64\).*needs \(24, 64\)"):
        convert_official(official_dir, vision_tower[0], tmp_path / "out")


def test_missing_weights_are_named(official_dir, vision_tower, tmp_path):
    (official_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        convert_official(official_dir, vision_tower[0], tmp_path / "out")
    (official_dir / "model.safetensors.index.json").unlink()
    (official_dir / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        convert_official(official_dir, vision_tower[0], tmp_path / "out")


def test_missing_key_is_named_with_its_official_name(tmp_path, vision_tower):
    directory = tmp_path / "official"
    write_official(directory, weights_format="bin")
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    del state["model.layers.5.mlp.down_proj.weight"]
    state["model.image_newline"] = torch.zeros(HIDDEN)
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(ValueError, match="model.image_newline"):
        convert_official(directory, vision_tower[0], tmp_path / "out")
    del state["model.image_newline"]
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing: .*\(official model.layers.5.mlp.down_proj.weight\)"):
        convert_official(directory, vision_tower[0], tmp_path / "out")


def test_wrong_vision_tower_and_missing_tokenizer(official_dir, vision_tower, tmp_path):
    with pytest.raises(FileNotFoundError, match="--vision-tower"):
        convert_official(official_dir, tmp_path / "nowhere", tmp_path / "out")
    edit_config(official_dir, mm_hidden_size=32)
    with pytest.raises(ValueError, match="mm_hidden_size"):
        convert_official(official_dir, vision_tower[0], tmp_path / "out")
    edit_config(official_dir, mm_hidden_size=VISION_HIDDEN)
    (official_dir / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        convert_official(official_dir, vision_tower[0], tmp_path / "out")


def test_cli_reports_errors_through_the_adallava_command(
    official_dir, vision_tower, tmp_path, capsys, monkeypatch
):
    import adallava.cli.command

    monkeypatch.setattr(adallava.cli.command, "COMMANDS", ["convert", "init"])
    edit_config(official_dir, num_prefix_layers=None)
    argv = ["convert", "--from-official", str(official_dir), "--vision-tower", str(vision_tower[0])]
    assert adallava.cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "num_prefix_layers" in capsys.readouterr().err


# ---- adallava init -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "switches"),
    [(["--switches", "layer"], "layer"), (["--switches", "head", "--rank", "2"], "head")],
)
def test_init_makes_a_loadable_adaptive_checkpoint(tmp_path, argv, switches):
    base_dir, out = tmp_path / "base", tmp_path / "out"
    base = tiny_llava(seed=3, num_layers=N)
    base.save_pretrained(base_dir)
    write_tokenizer(base_dir)
    (base_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    code = cli(
        init_command, ["init", "--base", str(base_dir), *argv, "--num-prefix-layers", "2", "--out", str(out)]
    )
    assert code == 0
    model = AdaLlava.from_pretrained(out)
    assert model.adaptive.switches == switches and model.num_prefix == 2
    if switches == "head":
        assert model.adaptive.rank == 2
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (base_dir / name).read_bytes()
    inputs = tiny_batch(1)
    inputs["input_ids"][inputs["input_ids"] == VOCAB] = base.config.image_token_id
    reference = LlavaForConditionalGeneration.from_pretrained(base_dir).eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference(**inputs).logits)  # base weights untouched
        out_budget = model(**inputs, budget=0.75)
    assert out_budget.plan is not None


def test_init_errors_name_the_problem(tmp_path, official_dir):
    with pytest.raises(FileNotFoundError, match="--base"):
        cli(
            init_command,
            ["init", "--base", str(tmp_path / "none"), "--switches", "layer", "--out", str(tmp_path)],
        )
    with pytest.raises(ValueError, match="adallava convert"):
        cli(
            init_command,
            ["init", "--base", str(official_dir), "--switches", "layer", "--out", str(tmp_path / "o")],
        )
