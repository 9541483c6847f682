"""The bundled trained models: they load offline by name and answer generated questions right."""

import pytest
from PIL import Image

from adallava.data.world.generate import generate_world, load_heldout
from adallava.inference.answering import ask
from adallava.io.hub import bundled_models, load_model

NAMES = ["tiny-llava", "tiny-adallava-l", "tiny-adallava-h", "tiny-adallava-l-prumerge"]
pytestmark = [
    pytest.mark.core,
    pytest.mark.skipif(
        not all(info.available for info in bundled_models()), reason="bundled models not built (make bundled)"
    ),
]


@pytest.fixture(scope="module")
def shape_question(tmp_path_factory):
    world = tmp_path_factory.mktemp("bundled") / "world"
    generate_world(world, split="test", seed=3, n=2, progress=False)
    return next(q for q in load_heldout(world) if q.family == "vqa_shape")


@pytest.mark.parametrize("name", NAMES)
def test_bundled_models_answer_a_generated_question(name, shape_question):
    model, processor = load_model(name)
    budget = None if name == "tiny-llava" else 1.0  # the base model has no trained scheduler
    with Image.open(shape_question.image) as image:
        result = ask(model, processor, image.convert("RGB"), shape_question.prompt, budget, max_new_tokens=4)
    assert result["answer"] == shape_question.answer == "square"


def test_the_readme_example_is_answered_at_reduced_budget():
    model, processor = load_model("tiny-adallava-l")
    question = "What color is the circle?\nAnswer the question using a single word or phrase."
    with Image.open("examples/scene.png") as image:
        result = ask(model, processor, image.convert("RGB"), question, 0.75, max_new_tokens=4)
    assert result["answer"] == "green"
    assert result["flops"]["llm"] <= 0.75 * result["full_flops"]["llm"] * (1 + 1e-9)


def test_the_prumerge_model_prunes_by_its_own_config():
    """Catches: the PruMerge+-trained model loaded without its token selection (its adaptive config names
    it; a user loads it by name with no flag), which would run all 36 visual tokens."""
    pruned, processor = load_model("tiny-adallava-l-prumerge")
    plain, _ = load_model("tiny-adallava-l")
    assert pruned.adaptive.token_selection == "prumerge+" and plain.adaptive.token_selection == "none"
    question = "What color is the circle?\nAnswer the question using a single word or phrase."
    with Image.open("examples/scene.png") as image:
        rgb = image.convert("RGB")
    results = [ask(model, processor, rgb, question, 1.0, max_new_tokens=4) for model in (pruned, plain)]
    assert [r["answer"] for r in results] == ["green", "green"]
    # Same prompt, same plan (every layer): fewer visual tokens are the only way to fewer LLM FLOPs.
    assert results[0]["flops"]["llm"] < 0.75 * results[1]["flops"]["llm"]
