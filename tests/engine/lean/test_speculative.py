"""Self-speculative decoding (`generate(..., speculative=...)`) against plain lean decoding at the
verify budget: identical greedy tokens (batched, mixed budgets, padding, end of sequence inside a
drafted run, k beyond the tokens left), per-step logits within 1e-5, and every row's KV cache within
1e-5 after generation, on random tiny models and on the bundled trained model; the pure parts (draft
plan, acceptance, the FLOPs report) against hand computations."""

import pytest
import torch
from PIL import Image

from adallava import AdaptiveConfig, ExecutionPlan, SpeculativeConfig
from adallava.core.cost.pricing import price_decode_step
from adallava.engine.hf_compat import StoppingCriteriaList
from adallava.engine.lean import runner, speculative
from adallava.engine.lean.speculative import accepted_lengths, draft_layers, shared_depth
from adallava.inference.answering import collate, encode
from adallava.inference.prompts import chat_prompt
from adallava.io.hub import load_model
from adallava.testing import tiny_inputs
from tests.engine.lean.models import N, StopRow, adaptive

pytestmark = pytest.mark.core

SCENE = "examples/scene.png"
CAPTION = "List the objects in the image."


@pytest.fixture(scope="module")
def layer_model():
    return adaptive(num_kv_heads=2)  # GQA


@pytest.fixture(scope="module")
def bundled():
    return load_model("tiny-adallava-l")


class CacheProbe:
    """Each original row's KV cache (valid positions, in order, per layer) when it leaves the running
    batch or when decoding ends: the cache generation left behind."""

    def __init__(self, monkeypatch):
        self.rows: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        drop = runner._Batch.drop

        def dropping(state, keep):
            self._snapshot(state, ~keep)
            drop(state, keep)

        def wrap(decode):
            def decoding(model, state, *args, **kwargs):
                result = decode(model, state, *args, **kwargs)
                self._snapshot(state, torch.ones(state.size, dtype=torch.bool))
                return result

            return decoding

        monkeypatch.setattr(runner._Batch, "drop", dropping)
        monkeypatch.setattr(runner, "_decode", wrap(runner._decode))
        monkeypatch.setattr(speculative, "speculative_decode", wrap(speculative.speculative_decode))

    def _snapshot(self, state, leaving: torch.Tensor) -> None:
        for index, units in enumerate(state.program.layers):
            for unit in units:
                rows = torch.arange(state.size) if unit.group.rows is None else unit.group.rows
                for inside, row in enumerate(rows.tolist()):
                    if not bool(leaving[row]) or unit.keys is None:
                        continue
                    valid = state.valid[row, : state.length] | (not state.has_pads)
                    original = int(state.original_rows[row])
                    self.rows[(original, index)] = (
                        unit.keys[inside][:, : state.length][:, valid].clone(),
                        unit.values[inside][:, : state.length][:, valid].clone(),
                    )

    def take(self) -> dict:
        rows, self.rows = self.rows, {}
        return rows


def run_both(model, inputs, monkeypatch, config, **kwargs):
    """(plain, speculative) lean outputs of the same greedy call, and their final caches."""
    probe = CacheProbe(monkeypatch)
    options = dict(do_sample=False, return_dict_in_generate=True, output_logits=True, output_scores=True)
    options |= kwargs
    with torch.no_grad():
        plain = model.generate(**inputs, engine="lean", **options)
        plain_caches = probe.take()
        fast = model.generate(**inputs, engine="lean", speculative=config, **options)
    return plain, fast, plain_caches, probe.take()


def assert_identical(plain, fast, plain_caches=None, fast_caches=None):
    """Same tokens, costs and per-step scores; logits within 1e-5 for rows still running; every
    row's cache within 1e-5 of plain decoding's (same positions, same layers)."""
    assert fast.sequences.tolist() == plain.sequences.tolist()
    assert torch.equal(fast.decode_cost.total, plain.decode_cost.total)
    assert torch.equal(fast.prefill_cost.total, plain.prefill_cost.total)
    assert len(fast.logits) == len(plain.logits) and len(fast.scores) == len(plain.scores)
    for a, b in zip(plain.logits, fast.logits, strict=True):
        running = a.abs().sum(-1) > 0  # finished rows have zeros in both
        assert torch.equal(running, b.abs().sum(-1) > 0)
        assert torch.allclose(a[running], b[running], atol=1e-5, rtol=0), (a - b).abs().max()
    for a, b in zip(plain.scores, fast.scores, strict=True):
        assert torch.equal(torch.isinf(a), torch.isinf(b))
    if plain_caches is not None:
        assert plain_caches.keys() == fast_caches.keys()
        for key, (keys, values) in plain_caches.items():
            other_keys, other_values = fast_caches[key]
            assert keys.shape == other_keys.shape, key
            assert torch.allclose(keys, other_keys, atol=1e-5, rtol=0), key
            assert torch.allclose(values, other_values, atol=1e-5, rtol=0), key


# ---- random tiny models ---------------------------------------------------------------------------
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_mixed_budgets_batched_identical(layer_model, monkeypatch, padding_side, k):
    """Catches: rows accepting different counts reading each other's positions, a rejected draft's
    keys left valid, wrong rotary positions after a round, holes or compaction losing entries."""
    inputs = tiny_inputs(layer_model.config, [5, 9, 2, 7], padding_side=padding_side, seed=1)
    plain, fast, *caches = run_both(
        layer_model, inputs, monkeypatch, SpeculativeConfig(draft_budget=0.8, num_draft_tokens=k),
        budget=[0.5, 1.0, 0.75, 0.9], max_new_tokens=10, min_new_tokens=10,
    )  # fmt: skip
    assert_identical(plain, fast, *caches)
    report = fast.speculative
    # Row 0 (budget 0.5: its draft is its verify plan) has every draft accepted: k + 1 tokens a round
    # for the 9 tokens after the prefill's, the last round cut to what is left.
    rounds = -(-9 // (k + 1))
    last = 9 - (rounds - 1) * (k + 1)
    assert int(report.rounds[0]) == rounds
    assert int(report.accepted[0]) == (rounds - 1) * k + min(k, last)
    assert bool((report.accepted <= report.drafted).all())
    assert bool((report.accepted >= 9 - report.rounds).all())  # a round makes >= accepted + 1 tokens


def test_compaction_keeps_the_caches(layer_model, monkeypatch):
    """Catches: moving rows' valid entries to the front (when holes fill the cache) losing or
    reordering keys. Rows with very different acceptance make holes fast."""
    calls = []
    compact = speculative.compact_cache
    monkeypatch.setattr(
        speculative, "compact_cache", lambda state: (calls.append(state.length), compact(state))
    )
    inputs = tiny_inputs(layer_model.config, [6, 3, 8], padding_side="left", seed=2)
    plain, fast, *caches = run_both(
        layer_model, inputs, monkeypatch, SpeculativeConfig(num_draft_tokens=4),
        budget=[0.5, 1.0, 1.0], max_new_tokens=16, min_new_tokens=16,
    )  # fmt: skip
    assert calls, "the case was meant to fill the cache with holes"
    assert_identical(plain, fast, *caches)


def test_unpadded_rows_accepting_different_counts(layer_model, monkeypatch):
    """Catches: a batch without padding whose rows accept different counts attending to the holes
    the rejected drafts left (the draft steps need the validity mask from the first hole on)."""
    inputs = tiny_inputs(layer_model.config, [6, 6, 6], padding_side="left", seed=7)
    assert bool(inputs["attention_mask"].all())
    plain, fast, *caches = run_both(
        layer_model, inputs, monkeypatch, SpeculativeConfig(num_draft_tokens=3),
        budget=[0.5, 1.0, 0.75], max_new_tokens=10, min_new_tokens=10,
    )  # fmt: skip
    assert_identical(plain, fast, *caches)
    assert len(set(fast.speculative.rounds.tolist())) > 1  # the rows really went at different paces


def test_end_of_sequence_inside_a_drafted_run(layer_model, monkeypatch):
    """Catches: tokens after an end-of-sequence token that was accepted mid-round kept, or the row's
    decode cost counted past it; the other rows going on unchanged."""
    inputs = tiny_inputs(layer_model.config, [5, 9, 3], padding_side="left", seed=4)
    budgets = [0.5, 1.0, 0.75]
    with torch.no_grad():
        first = layer_model.generate(
            **inputs, budget=budgets, max_new_tokens=8, min_new_tokens=8, do_sample=False
        )
    width = inputs["input_ids"].shape[1]
    eos = int(first[0, width + 2])  # row 0 (its draft is its verify plan) ends at its third new token
    plain, fast, *caches = run_both(
        layer_model, inputs, monkeypatch, SpeculativeConfig(num_draft_tokens=4),
        budget=budgets, max_new_tokens=8, eos_token_id=eos, pad_token_id=0,
    )  # fmt: skip
    new = fast.sequences[:, width:]
    assert int((new[0] == eos).nonzero()[0]) <= 2 and (new[0, 3:] == 0).all()
    assert_identical(plain, fast, *caches)


def test_drafting_stops_at_a_drafted_end_of_sequence(layer_model, monkeypatch):
    """Catches: drafting on past a draft that ended the answer (work no row can use), or miscounting
    the drafts that made it into the output."""
    inputs = tiny_inputs(layer_model.config, [5], padding_side="left", seed=4)
    with torch.no_grad():
        first = layer_model.generate(
            **inputs, budget=0.5, max_new_tokens=8, min_new_tokens=8, do_sample=False
        )
    eos = int(first[0, inputs["input_ids"].shape[1] + 2])  # the third new token ends the answer
    plain, fast, *_ = run_both(
        layer_model, inputs, monkeypatch, SpeculativeConfig(num_draft_tokens=6),
        budget=0.5, max_new_tokens=8, eos_token_id=eos, pad_token_id=0,
    )  # fmt: skip
    assert_identical(plain, fast)
    report = fast.speculative  # the draft is the verify plan: it drafts the second and third tokens, stops
    assert (report.drafted.tolist(), report.accepted.tolist(), report.rounds.tolist()) == ([2], [2], [1])


def test_wrong_drafts_never_change_the_output(layer_model, monkeypatch):
    """Catches: a round cut short (every row drafted an end of sequence the verifier rejects) leaving
    its unused positions valid in the cache mask, or any draft leaking into the output."""
    eos = 3  # suppressed by min_new_tokens for the verifier; the draft below proposes it every time
    monkeypatch.setattr(
        speculative._Rounds, "_choose", lambda self, logits, produced: torch.full_like(produced, eos)
    )
    inputs = tiny_inputs(layer_model.config, [4, 7, 5], padding_side="left", seed=11)
    plain, fast, *caches = run_both(
        layer_model, inputs, monkeypatch, SpeculativeConfig(num_draft_tokens=4),
        budget=[1.0, 0.75, 0.6], max_new_tokens=8, min_new_tokens=8, eos_token_id=eos, pad_token_id=0,
    )  # fmt: skip
    assert_identical(plain, fast, *caches)
    assert fast.speculative.accepted.tolist() == [0, 0, 0]
    assert fast.speculative.rounds.tolist() == [7, 7, 7]  # one token a round after the prefill's
    assert fast.speculative.drafted.tolist() == [6, 6, 6]  # the last round had no token left to draft


def test_more_draft_tokens_than_tokens_left(layer_model, monkeypatch):
    """Catches: k larger than the tokens left writing past the limit or the cache, or drafting tokens
    no row can use."""
    inputs = tiny_inputs(layer_model.config, [4, 7], padding_side="left", seed=5)
    plain, fast, *caches = run_both(
        layer_model, inputs, monkeypatch, SpeculativeConfig(num_draft_tokens=20),
        budget=[0.5, 1.0], max_new_tokens=3, min_new_tokens=3,
    )  # fmt: skip
    assert_identical(plain, fast, *caches)
    assert fast.sequences.shape[1] == inputs["input_ids"].shape[1] + 3
    assert int(fast.speculative.drafted.max()) <= 2  # the prefill made token 1: at most 2 more to draft


def test_explicit_plan_and_base_model(layer_model, monkeypatch):
    """Catches: speculation only working with budgets: an explicit plan and the base model (no latency
    token, no scheduler: the draft is the prefix, an early exit) give plain decoding's tokens."""
    inputs = tiny_inputs(layer_model.config, [3, 6], padding_side="left", seed=3)
    plan = ExecutionPlan.from_layers(N, [[0, 1, 2, 4], [0, 1, 2, 3, 5]])
    config = SpeculativeConfig(num_draft_tokens=3)
    assert_identical(*run_both(layer_model, inputs, monkeypatch, config, plan=plan, max_new_tokens=6))
    plain, fast, *caches = run_both(layer_model, inputs, monkeypatch, config, max_new_tokens=6)
    assert_identical(plain, fast, *caches)
    assert fast.speculative.shared_layers == 3  # the prefix: the draft runs no layer verification redoes


def test_token_selection(monkeypatch):
    """Catches: the prefill's re-laid rows (PruMerge keeps fewer visual tokens per row) miscounting
    each row's real cache positions or rotary positions in the rounds."""
    model = adaptive(adaptive_config=AdaptiveConfig(token_selection="prumerge"))
    inputs = tiny_inputs(model.config, [4, 7], padding_side="left", seed=5)
    plain, fast, *caches = run_both(
        model, inputs, monkeypatch, SpeculativeConfig(num_draft_tokens=3),
        budget=[0.6, 1.0], max_new_tokens=8, min_new_tokens=8,
    )  # fmt: skip
    assert_identical(plain, fast, *caches)


def test_streamer_and_stopping_criteria_see_plain_steps(layer_model):
    """Catches: the streamer (the server streams) handed rows' tokens out of step, or a stopping
    criterion (a client that left) firing late because its row had run ahead in a round."""

    class Recorder:
        def __init__(self):
            self.values = []

        def put(self, value):
            self.values.append(value.tolist())

        def end(self):
            self.values.append("end")

    inputs = tiny_inputs(layer_model.config, [4, 6, 5], padding_side="left", seed=8)
    width = inputs["input_ids"].shape[1]
    seen, outs = [], []
    for config in (None, SpeculativeConfig(num_draft_tokens=4)):
        recorder = Recorder()
        with torch.no_grad():
            outs.append(
                layer_model.generate(
                    **inputs,
                    budget=[0.5, 0.5, 1.0],
                    max_new_tokens=8,
                    min_new_tokens=8,
                    do_sample=False,
                    pad_token_id=0,
                    streamer=recorder,
                    speculative=config,
                    stopping_criteria=StoppingCriteriaList([StopRow(1, width, 3)]),
                )  # fmt: skip
            )
        seen.append(recorder.values)
    assert outs[1].tolist() == outs[0].tolist()
    assert (outs[1][1, width + 3 :] == 0).all()
    assert seen[1] == seen[0]


# ---- the bundled trained model --------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 4, 6])
def test_bundled_model_identical(bundled, monkeypatch, k):
    """Catches, on a trained model (where drafts are mostly right, so long accepted runs happen): any
    of the above; and a draft that is never accepted (speculation that only costs)."""
    model, processor = bundled
    scene = Image.open(SCENE).convert("RGB")
    questions = [CAPTION, "what color is the circle ?", CAPTION]
    prompts = [encode(processor, chat_prompt(processor, q), [scene]) for q in questions]
    inputs = collate(prompts, processor.tokenizer.pad_token_id or 0)
    plain, fast, *caches = run_both(
        model, inputs, monkeypatch, SpeculativeConfig(num_draft_tokens=k),
        budget=[1.0, 0.75, 0.75], max_new_tokens=24,
    )  # fmt: skip
    assert_identical(plain, fast, *caches)
    report = fast.speculative
    assert int(report.accepted.sum()) > 0
    prefix = model.adaptive.num_prefix_layers  # 8 of 16: the default draft is the prefix
    assert report.draft_plan.layers[:, :prefix].all() and not report.draft_plan.layers[:, prefix:].any()


# ---- the pure parts -------------------------------------------------------------------------------
def test_draft_layers_take_the_verify_plans_best_upper_layers():
    """Catches: a draft plan with a layer the verify plan skips (no cache for it), the wrong ranking,
    or a row's own units ignored."""
    verify = torch.tensor([[1, 1, 1, 0, 1, 1], [1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    priority = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.2, 0.8, 0.1, 0.9], [0.0, 0.0, 0.0, 0.0]])
    units = torch.tensor([2, 1, 0])
    expected = [[1, 1, 0, 0, 1, 1], [1, 1, 0, 1, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert draft_layers(verify, 2, units, priority).int().tolist() == expected
    shallow = draft_layers(verify, 2, torch.tensor([1, 1, 3]), None)
    assert shallow.int().tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 0]]
    assert shared_depth(shallow, verify) == 4  # rows 0 and 1 first differ at layer 4, row 2 at 5
    assert shared_depth(verify, verify) == 6


def test_accepted_lengths_count_leading_agreement():
    """Catches: counting every agreeing draft instead of the leading run (a draft after a rejected
    one was drafted from a wrong prefix)."""
    drafts = torch.tensor([[5, 6, 7], [5, 9, 7], [1, 6, 7], [5, 6, 7]])
    verified = torch.tensor([[5, 6, 7, 2], [5, 6, 7, 2], [5, 6, 7, 2], [5, 6, 8, 2]])
    assert accepted_lengths(drafts, verified).tolist() == [3, 1, 0, 2]


def test_report_flops_by_hand(layer_model):
    """Catches: drafted, verified or wasted work priced wrongly. Budget 0.5 with the default draft: the
    draft is the verify plan (the prefix), so one round of k drafts accepts all k plus the verifier's
    token; the only waste is the draft's own LM head on its k tokens (2 * hidden * vocab each)."""
    k = 3
    inputs = tiny_inputs(layer_model.config, [5], padding_side="left", seed=6)
    with torch.no_grad():
        out = layer_model.generate(
            **inputs, budget=0.5, max_new_tokens=k + 2, min_new_tokens=k + 2, do_sample=False,
            return_dict_in_generate=True, speculative=SpeculativeConfig(num_draft_tokens=k),
        )  # fmt: skip
    report = out.speculative
    assert (
        report.rounds.tolist() == [1] and report.drafted.tolist() == [k] and report.accepted.tolist() == [k]
    )
    text = layer_model.config.text_config
    head = 2 * text.hidden_size * text.vocab_size
    assert report.wasted_flops.tolist() == [float(k * head)]
    assert torch.equal(report.spent_flops - report.wasted_flops, out.decode_cost.total)
    # The draft's steps by hand: k one-token steps of the prefix plan after the prefill's positions.
    past = int(out.prefill_tokens[0])
    steps = price_decode_step(layer_model.shape, torch.arange(past + 1, past + k + 1), out.plan.expand(k))
    assert float(report.draft_flops[0]) >= float(steps.total.sum())


def test_refusals_name_the_conflict(layer_model):
    """Catches: unsupported combinations silently running plain decoding or failing deep inside."""
    inputs = tiny_inputs(layer_model.config, [4], padding_side="left", seed=12)
    call = dict(budget=1.0, max_new_tokens=3, speculative=True)
    with pytest.raises(ValueError, match="compile=True"):
        layer_model.generate(**inputs, compile=True, **call)
    with pytest.raises(ValueError, match="greedy only"):
        layer_model.generate(**inputs, do_sample=True, **call)
    with pytest.raises(ValueError, match="engine='hf'"):
        layer_model.generate(**inputs, engine="hf", **call)
    with pytest.raises(ValueError, match="deadline"):
        layer_model.generate(**inputs, max_new_tokens=3, budget="500ms", speculative=True)
    with pytest.raises(ValueError, match=r"\[0.5, 1\]"):
        layer_model.generate(**inputs, **{**call, "speculative": SpeculativeConfig(draft_budget=0.2)})
    with pytest.raises(TypeError, match="SpeculativeConfig"):
        layer_model.generate(**inputs, **{**call, "speculative": "yes"})
    with pytest.raises(ValueError, match="num_draft_tokens"):
        SpeculativeConfig(num_draft_tokens=0)
    with pytest.raises(ValueError, match="draft_budget"):
        SpeculativeConfig(draft_budget=1.5)
    head_model = adaptive(seed=5, adaptive_config=AdaptiveConfig(switches="head", rank=1, mlp_groups=4))
    with pytest.raises(ValueError, match="layer plans only"):
        head_model.generate(**inputs, **call)
