"""answer_batch: a batch with mixed budgets and token limits answers as each request alone."""

import pytest
from PIL import Image

from adallava import SpeculativeConfig
from adallava.inference.answering import FINISH_LENGTH, FINISH_STOP, answer_batch, encode
from adallava.inference.prompts import chat_prompt, conversation_prompt
from adallava.io.hub import load_model

pytestmark = pytest.mark.core  # CI also runs these on the newest allowed dependencies


@pytest.fixture(scope="module")
def bundled():
    return load_model("tiny-adallava-l")


def _scene():
    return Image.open("examples/scene.png").convert("RGB")


@pytest.mark.parametrize("name", ["tiny-adallava-l", "tiny-adallava-h"])
def test_mixed_budgets_and_limits_answer_as_one_at_a_time(name):
    model, processor = load_model(name)
    questions = ["what color is the circle ?", "how many shapes are there ?", "what shape is red ?"]
    prompts = [encode(processor, chat_prompt(processor, q), [_scene()]) for q in questions]
    budgets, limits = [0.5, 1.0, "130M"], [2, 8, 5]
    batched = answer_batch(model, processor, prompts, budgets, limits)
    for prompt, budget, limit, answer in zip(prompts, budgets, limits, batched, strict=True):
        [alone] = answer_batch(model, processor, [prompt], [budget], [limit])
        assert answer == alone
        assert answer.completion_tokens <= limit
        assert answer.finish_reason in (FINISH_STOP, FINISH_LENGTH)
        if answer.finish_reason == FINISH_LENGTH:
            assert len(answer.token_ids) == limit
    assert batched[0].budget == 0.5 and batched[0].plan["layers"] == list(range(8))  # 0.5 of 16: the prefix
    assert batched[1].prefill_flops == batched[1].full_prefill_flops
    assert ("head_units" in batched[1].plan) == (model.adaptive.switches == "head")


def test_a_text_only_request_batches_with_image_requests(bundled):
    model, processor = bundled
    text_only = [{"role": "user", "content": [{"type": "text", "text": "what is a circle ?"}]}]
    prompts = [
        encode(processor, conversation_prompt(processor, text_only)),
        encode(processor, chat_prompt(processor, "what color is the circle ?"), [_scene()]),
    ]
    batched = answer_batch(model, processor, prompts, [0.75, 0.75], [4, 4])
    for prompt, answer in zip(prompts, batched, strict=True):
        assert answer == answer_batch(model, processor, [prompt], [0.75], [4])[0]


def test_budgets_must_be_all_given_or_all_absent(bundled):
    model, processor = bundled
    prompt = encode(processor, chat_prompt(processor, "what shape ?"), [_scene()])
    with pytest.raises(ValueError, match="either every row under a budget or none"):
        answer_batch(model, processor, [prompt, prompt], [None, 0.5], [2, 2])
    with pytest.raises(ValueError, match="outside the allowed range"):
        answer_batch(model, processor, [prompt], [0.2], [2])


def test_explicit_plans_give_plan_keys_and_unit_fractions():
    from adallava.core.plan import ExecutionPlan
    from adallava.inference.answering import prefill_batch

    for name in ("tiny-adallava-l", "tiny-adallava-h"):
        model, processor = load_model(name)
        prompt = encode(processor, chat_prompt(processor, "what shape is red ?"), [_scene()])
        plan = ExecutionPlan.early_exit(2, model.num_layers, 3)
        answers = answer_batch(model, processor, [prompt, prompt], [None, None], [3, 3], plan)
        assert all(a.plan["layers"] == [0, 1, 2] and a.budget is None for a in answers)
        assert answers[0].plan_key.split("/")[0] == "0,1,2"
        [budgeted] = answer_batch(model, processor, [prompt], [0.75], [3])
        [full] = answer_batch(model, processor, [prompt], [None], [3])
        assert full.plan_key == ",".join(map(str, range(model.num_layers))) and full.unit_fraction is None
        heads = model.adaptive.switches == "head"
        assert (budgeted.unit_fraction is not None) == heads and ("/" in budgeted.plan_key) == heads
        prefill_batch(model, processor, [prompt, prompt], [None, None], plan)  # runs; returns nothing
        with pytest.raises(ValueError, match="budgets or an explicit plan, not both"):
            answer_batch(model, processor, [prompt, prompt], [0.5, 0.5], [2, 2], plan)


def test_over_budget_allows_the_relative_tolerance():
    from adallava.core.budget import RELATIVE_TOLERANCE, over_budget

    full = [100.0, 100.0, 100.0]
    cost = [50.0, 50.0 * (1 + RELATIVE_TOLERANCE / 2), 50.0 * (1 + 10 * RELATIVE_TOLERANCE)]
    assert over_budget(cost, full, 0.5).tolist() == [False, False, True]
    assert over_budget(cost, full, [0.5, 0.4, 1.0]).tolist() == [False, True, False]


def test_prompts_carry_the_words_the_tokenizer_does_not_know(bundled):
    # Bug caught: words outside the vocabulary silently read as <unk>, with nothing telling the user.
    from adallava.inference.answering import unknown_words

    model, processor = bundled
    prompt = encode(processor, chat_prompt(processor, "HOW many Zebras or zebras are there?"), [_scene()])
    assert prompt.unknown_words == ("Zebras", "zebras")  # by hand: "HOW" folds onto the vocabulary's "How"
    known = encode(processor, chat_prompt(processor, "How many circles are there?"), [_scene()])
    assert known.unknown_words == ()
    [answer] = answer_batch(model, processor, [prompt], [0.75], [2])
    assert answer.unknown_words == ("Zebras", "zebras")
    assert unknown_words(processor.tokenizer, "a purple Hexagon") == ["Hexagon"]


def test_budgets_need_a_trained_scheduler(bundled):
    # Bug caught: a base model (tiny-llava, wrapped with a fresh scheduler) answering under a budget.
    from adallava.inference.answering import prefill_batch

    base, processor = load_model("tiny-llava")
    assert not base.scheduler_trained and bundled[0].scheduler_trained
    prompt = encode(processor, chat_prompt(processor, "What shape is red?"), [_scene()])
    for call in (lambda: answer_batch(base, processor, [prompt], [0.75], [2]),
                 lambda: prefill_batch(base, processor, [prompt], [1.0])):  # fmt: skip
        with pytest.raises(ValueError, match=r"no trained scheduler \(it is a base model"):
            call()
    [answer] = answer_batch(base, processor, [prompt], [None], [2])
    assert answer.budget is None and answer.plan["layers"] == list(range(base.num_layers))


def test_speculative_answers_carry_each_rows_drafts(bundled):
    """Catches: Answer.speculative missing, taken from the wrong row, or set on plainly decoded answers
    (the server reports it per request); and speculation changing an answer. Reference: the
    SpeculativeReport that generate hands its observer."""
    model, processor = bundled
    questions = ["List the objects in the image.", "what color is the circle ?"]
    prompts = [encode(processor, chat_prompt(processor, q), [_scene()]) for q in questions]
    reports = []
    config = SpeculativeConfig(num_draft_tokens=3, observer=reports.append)
    fast = answer_batch(model, processor, prompts, [1.0, 0.75], [16, 16], speculative=config)
    plain = answer_batch(model, processor, prompts, [1.0, 0.75], [16, 16])
    assert fast == plain and [a.speculative for a in plain] == [None, None]
    [report] = reports
    assert [a.speculative for a in fast] == [
        {"drafted": int(d), "accepted": int(a)} for d, a in zip(report.drafted, report.accepted, strict=True)
    ]
    assert fast[0].speculative["drafted"] > fast[1].speculative["drafted"]  # the caption is the longer answer
