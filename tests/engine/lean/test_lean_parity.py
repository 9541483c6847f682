"""The lean engine against today's path through Hugging Face `generate` (engine="hf") and against HF's
own decoder layers: identical greedy tokens and logits within 1e-5 (fp32) for layer and head plans,
mixed budgets in one batch, left and right padding, end of sequence mid-batch, token selection,
sampling, streamers and stopping criteria."""

import pytest
import torch

from adallava import AdaptiveConfig, ExecutionPlan
from adallava.engine.hf_compat import StoppingCriteriaList
from adallava.engine.lean.compiled import CompiledGraphs
from adallava.engine.lean.functional import decoder_layer, rotary_tables
from adallava.engine.lean.weights import read_layer
from adallava.testing import tiny_inputs, tiny_llava
from tests.engine.lean.models import N, StopRow, adaptive

pytestmark = pytest.mark.core


@pytest.fixture(scope="module")
def layer_model():
    return adaptive(num_kv_heads=2)  # GQA


@pytest.fixture(scope="module")
def head_model():
    return adaptive(seed=5, adaptive_config=AdaptiveConfig(switches="head", rank=1, mlp_groups=4))


def both(model, inputs, **kwargs):
    """(hf, lean) outputs of the same call, with per-step logits and scores."""
    common = dict(do_sample=False, return_dict_in_generate=True, output_logits=True, output_scores=True)
    common |= kwargs
    with torch.no_grad():
        return model.generate(**inputs, engine="hf", **common), model.generate(
            **inputs, engine="lean", **common
        )


def assert_same(hf, lean, eos=None):
    """Same tokens, plans and costs; logits within 1e-5 at every step for every row still running
    (a row finished at `eos` is dropped by the lean loop, while HF keeps computing it)."""
    assert lean.sequences.tolist() == hf.sequences.tolist()
    assert len(lean.logits) == len(hf.logits)
    new = hf.sequences[:, hf.sequences.shape[1] - len(hf.logits) :]
    for step, (a, b) in enumerate(zip(hf.logits, lean.logits, strict=True)):
        running = ~(new[:, :step] == eos).any(-1) if eos is not None else torch.ones(len(a), dtype=torch.bool)
        a, b = a[running], b[running]
        live = torch.isfinite(a)
        assert torch.allclose(a[live], b[live], atol=1e-5, rtol=0), f"step {step}: {(a - b).abs().max()}"
    for step, (a, b) in enumerate(zip(hf.scores, lean.scores, strict=True)):
        running = ~(new[:, :step] == eos).any(-1) if eos is not None else torch.ones(len(a), dtype=torch.bool)
        assert torch.equal(torch.isinf(a[running]), torch.isinf(b[running]))  # suppressed tokens alike
    if hf.plan is None:
        assert lean.plan is None
    else:
        assert torch.equal(lean.plan.layers, hf.plan.layers)
    for name in ("prefill_cost", "decode_cost"):
        assert torch.equal(getattr(lean, name).total, getattr(hf, name).total)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_layer_plans_mixed_budgets(layer_model, padding_side):
    """Catches: rows reading another row's cache, wrong positions or masks under padding, a per-row
    plan applied to the wrong rows."""
    inputs = tiny_inputs(layer_model.config, [5, 9, 2, 7], padding_side=padding_side, seed=1)
    assert_same(*both(layer_model, inputs, budget=[0.5, 1.0, 0.75, 0.6], max_new_tokens=6, min_new_tokens=6))


def test_head_plans_mixed_budgets(head_model):
    """Catches: head-plan groups with the wrong sliced weights or KV slots in the lean path."""
    inputs = tiny_inputs(head_model.config, [4, 8, 6], padding_side="left", seed=2)
    hf, lean = both(head_model, inputs, budget=[0.55, 1.0, 0.8], max_new_tokens=5, min_new_tokens=5)
    assert hf.plan.heads is not None and not bool(hf.plan.heads.all())  # some units really are off
    assert_same(hf, lean)
    assert torch.equal(lean.plan.heads, hf.plan.heads)


def test_explicit_plan_and_base_model(layer_model):
    """Catches: an explicit plan or the base model (no latency token) run differently from HF."""
    inputs = tiny_inputs(layer_model.config, [3, 6], padding_side="left", seed=3)
    plan = ExecutionPlan.from_layers(N, [[0, 1, 2, 4], [0, 1, 2, 3, 5]])
    assert_same(*both(layer_model, inputs, plan=plan, max_new_tokens=4))
    assert_same(*both(layer_model, inputs, max_new_tokens=4))


def test_end_of_sequence_mid_batch(layer_model):
    """Catches: a finished row dropped from the batch taking other rows' caches or tokens with it."""
    inputs = tiny_inputs(layer_model.config, [5, 9, 3], padding_side="left", seed=4)
    with torch.no_grad():
        first = layer_model.generate(
            **inputs,
            budget=[0.5, 1.0, 0.75],
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
            engine="hf",
        )
    eos = int(first[1, inputs["input_ids"].shape[1] + 1])  # row 1's second new token ends it
    hf, lean = both(
        layer_model, inputs, budget=[0.5, 1.0, 0.75], max_new_tokens=6, eos_token_id=eos, pad_token_id=0
    )
    new = lean.sequences[:, inputs["input_ids"].shape[1] :]
    assert int((new[1] == eos).nonzero()[0]) <= 1 and (new[1, 2:] == 0).all()
    assert_same(hf, lean, eos)


def test_token_selection(layer_model):
    """Catches: the lean prefill losing the re-laid-out rows of PruMerge (positions from the new mask)."""
    model = adaptive(adaptive_config=AdaptiveConfig(token_selection="prumerge"))
    inputs = tiny_inputs(model.config, [4, 7], padding_side="left", seed=5)
    assert_same(*both(model, inputs, budget=[0.6, 1.0], max_new_tokens=4, min_new_tokens=4))


def test_seeded_sampling_equals_hf(layer_model):
    """Catches: temperature / top-k / top-p applied differently from HF's warpers."""
    inputs = tiny_inputs(layer_model.config, [5, 8], padding_side="left", seed=6)
    outs = []
    for engine in ("hf", "lean"):
        torch.manual_seed(7)
        with torch.no_grad():
            outs.append(
                layer_model.generate(
                    **inputs,
                    budget=[0.75, 1.0],
                    max_new_tokens=6,
                    do_sample=True,
                    temperature=0.7,
                    top_k=20,
                    top_p=0.9,
                    engine=engine,
                )
            )
    assert outs[0].tolist() == outs[1].tolist()


def test_decoder_layer_equals_hf_layer():
    """The functional layer against HF's own Qwen2 layer (q/k/v biases, GQA) on a prefill and a
    decoding step. Catches: a wrong norm, rotary, bias or cache write in `functional`."""
    base = tiny_llava(seed=2, text_model="qwen2", num_layers=2, num_kv_heads=2, attn_implementation="sdpa")
    text = base.model.language_model
    layer = text.layers[1]
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, text.config.hidden_size)
    positions = torch.arange(7)[None].expand(2, -1)
    cos, sin = text.rotary_emb(hidden, position_ids=positions)
    with torch.no_grad():
        expected = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), position_ids=positions)
        weights = read_layer(layer)
        keys = torch.zeros(2, weights.num_kv_heads, 8, weights.head_dim)
        values = torch.zeros_like(keys)
        c, s = rotary_tables(cos, sin)
        got = decoder_layer(weights, hidden, c[:, None], s[:, None], keys, values, 0, None, causal=True)
        assert torch.allclose(got, expected, atol=1e-5, rtol=0)
        # one more token against the full recomputation of 8 tokens
        longer = torch.cat([hidden, torch.randn(2, 1, hidden.shape[-1])], dim=1)
        positions = torch.arange(8)[None].expand(2, -1)
        cos, sin = text.rotary_emb(longer, position_ids=positions)
        full = layer(longer, attention_mask=None, position_embeddings=(cos, sin), position_ids=positions)
        c, s = rotary_tables(cos[:, 7:], sin[:, 7:])
        step = decoder_layer(
            weights, longer[:, 7:], c[:, None], s[:, None], keys, values, 7, None, causal=True
        )
        assert torch.allclose(step[:, 0], full[:, 7], atol=1e-5, rtol=0)


def test_stopping_a_row_leaves_the_others_unchanged(layer_model):
    """Catches: a row stopped by a criterion (a cancelled request) changing its batch-mates' answers,
    or still producing tokens."""
    inputs = tiny_inputs(layer_model.config, [4, 6, 5], padding_side="left", seed=8)
    width = inputs["input_ids"].shape[1]
    kwargs = dict(
        budget=[0.6, 1.0, 0.75], max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0
    )
    with torch.no_grad():
        plain = layer_model.generate(**inputs, engine="lean", **kwargs)
        stopped = layer_model.generate(
            **inputs, engine="lean", stopping_criteria=StoppingCriteriaList([StopRow(1, width, 2)]), **kwargs
        )
        hf = layer_model.generate(
            **inputs, engine="hf", stopping_criteria=StoppingCriteriaList([StopRow(1, width, 2)]), **kwargs
        )
    assert stopped.tolist() == hf.tolist()
    assert stopped[[0, 2]].tolist() == plain[[0, 2]].tolist()
    assert (stopped[1, width + 2 :] == 0).all()
    assert stopped[1, : width + 2].tolist() == plain[1, : width + 2].tolist()


def test_streamer_sees_the_same_tokens(layer_model):
    """Catches: a streamer fed different steps by the lean loop than by HF generate (the server streams)."""

    class Recorder:
        def __init__(self):
            self.values = []

        def put(self, value):
            self.values.append(value.tolist())

        def end(self):
            self.values.append("end")

    inputs = tiny_inputs(layer_model.config, [4, 6], padding_side="left", seed=9)
    seen = []
    for engine in ("hf", "lean"):
        recorder = Recorder()
        with torch.no_grad():
            layer_model.generate(
                **inputs,
                budget=[0.6, 1.0],
                max_new_tokens=4,
                do_sample=False,
                streamer=recorder,
                engine=engine,
            )
        seen.append(recorder.values)
    assert seen[0] == seen[1]


def test_lean_follows_weight_edits(layer_model):
    """Catches: fused weight copies of the lean engine going stale after an in-place edit."""
    model = adaptive(seed=11)
    inputs = tiny_inputs(model.config, [5], padding_side="left", seed=10)
    both(model, inputs, budget=1.0, max_new_tokens=3)  # fills the lean weights cache
    with torch.no_grad():
        model.text_model.layers[4].self_attn.q_proj.weight.mul_(3.0)
        model.text_model.layers[5].mlp.up_proj.weight.add_(0.05)
    assert_same(*both(model, inputs, budget=1.0, max_new_tokens=3))


def test_unsupported_options_name_engine_hf(layer_model):
    """Catches: options the lean loop does not implement silently ignored."""
    inputs = tiny_inputs(layer_model.config, [4], padding_side="left", seed=12)
    with pytest.raises(ValueError, match=r"repetition_penalty.*engine='hf'"):
        layer_model.generate(**inputs, max_new_tokens=3, repetition_penalty=1.3, engine="lean")
    with pytest.raises(ValueError, match="engine must be 'lean' or 'hf'"):
        layer_model.generate(**inputs, max_new_tokens=3, engine="fast")
    with torch.no_grad():  # the same option runs on HF generate
        layer_model.generate(**inputs, max_new_tokens=3, repetition_penalty=1.3, engine="hf")


def test_timings_are_reported(layer_model):
    inputs = tiny_inputs(layer_model.config, [4], padding_side="left", seed=13)
    for engine in ("hf", "lean"):
        with torch.no_grad():
            out = layer_model.generate(
                **inputs,
                budget=0.75,
                max_new_tokens=3,
                min_new_tokens=3,
                engine=engine,
                return_dict_in_generate=True,
            )
        assert out.prefill_ms > 0 and out.decode_ms > 0


@pytest.mark.parametrize("feature_layer, strategy", [(-1, "default"), (-2, "full"), (1, "default")])
def test_lean_vision_tower_equals_hf(feature_layer, strategy):
    """Catches: the functional CLIP tower selecting another hidden state than HF (feature layer,
    class token), or a wrong attention scale, norm or projector."""
    from adallava.engine import hf_compat
    from adallava.engine.lean.vision import lean_image_features, lean_vision_reason

    base = tiny_llava(seed=4, num_layers=2, vision_layers=3)
    base.config.vision_feature_layer = base.model.config.vision_feature_layer = feature_layer
    base.config.vision_feature_select_strategy = strategy
    base.model.config.vision_feature_select_strategy = strategy
    assert lean_vision_reason(base.model, base.config) is None
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_compat.image_features(base.model, pixels)
        got = lean_image_features(base.model, base.config, pixels)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compiled_decoding_equals_hf(layer_model):
    """Catches: the static-shape step (bucketed cache, index_copy_ writes, a mask over every cached
    position, finished rows decoding padding) diverging from HF. Slow: torch.compile on CPU."""
    inputs = tiny_inputs(layer_model.config, [5, 9, 3], padding_side="left", seed=14)
    with torch.no_grad():
        first = layer_model.generate(
            **inputs,
            budget=[0.5, 1.0, 0.75],
            max_new_tokens=5,
            min_new_tokens=5,
            do_sample=False,
            engine="hf",
        )
    eos = int(first[0, inputs["input_ids"].shape[1] + 1])  # row 0 ends mid-answer
    hf, lean = both(
        layer_model, inputs, budget=[0.5, 1.0, 0.75], max_new_tokens=5, eos_token_id=eos, pad_token_id=0
    )
    with torch.no_grad():
        compiled = layer_model.generate(
            **inputs,
            budget=[0.5, 1.0, 0.75],
            max_new_tokens=5,
            eos_token_id=eos,
            pad_token_id=0,
            compile=True,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
            output_scores=True,
        )
    assert_same(hf, compiled, eos)
    assert layer_model.lean_engine.compiled.events  # the compilation was recorded
    with pytest.raises(ValueError, match="lean engine"):
        layer_model.generate(**inputs, max_new_tokens=2, compile=True, engine="hf")


@pytest.mark.slow
def test_compiled_graphs_are_kept_per_plan_and_bounded(layer_model):
    """Catches: a guard-free compiled graph reused for another plan or shape (its key missing what the
    graph depends on), and a graph cache that grows without bound. Slow: torch.compile on CPU."""
    inputs = tiny_inputs(layer_model.config, [6, 4], padding_side="left", seed=21)
    options = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    compiled = layer_model.lean_engine.compiled
    compiled.limit, compiled.events = 3, []
    try:
        with torch.no_grad():
            for budget in (1.0, 0.5, 1.0):
                eager = layer_model.generate(**inputs, budget=budget, engine="lean", **options)
                graph = layer_model.generate(**inputs, budget=budget, engine="lean", compile=True, **options)
                assert torch.equal(graph, eager), budget
    finally:
        compiled.limit = CompiledGraphs.limit
    # Per request: the prefix (one graph whatever the budget), the upper layers and the step (one each
    # per plan). 1.0 compiles 3; 0.5 reuses the prefix and compiles 2, evicting 1.0's; 1.0 compiles 2.
    names = [event["key"].split("'")[1] for event in compiled.events]
    prefill, step = "static_prefill", "static_step"
    assert names == [prefill, prefill, step] + [prefill, step] * 2
    assert len(compiled._graphs) == 3


def test_an_adapter_added_after_a_lean_call_is_not_ignored():
    """Catches: a cached structure verdict or weight copy that misses a projection wrapped after the
    first call (a LoRA-style adapter): the lean engine would silently drop the adapter's delta."""
    from torch import nn

    class Adapter(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.delta = inner, nn.Linear(inner.in_features, inner.out_features, bias=False)
            nn.init.normal_(self.delta.weight, std=0.5)

        def forward(self, x):
            return self.inner(x) + self.delta(x)

    model = adaptive(seed=13)
    inputs = tiny_inputs(model.config, [5], padding_side="left", seed=15)
    with torch.no_grad():
        model.generate(**inputs, budget=1.0, max_new_tokens=3)  # lean, caches filled
        attn = model.text_model.layers[4].self_attn
        attn.q_proj = Adapter(attn.q_proj)
        default = model.generate(**inputs, budget=1.0, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        hf = model.generate(
            **inputs, budget=1.0, max_new_tokens=4, min_new_tokens=4, do_sample=False, engine="hf"
        )
        with pytest.raises(ValueError, match="wrapped projections"):
            model.generate(**inputs, budget=1.0, max_new_tokens=2, engine="lean")
    assert default.tolist() == hf.tolist()
