"""The bundled trained models: they load offline by name and answer generated questions right."""

import pytest
from PIL import Image

from adallava.data.world.generate import generate_world, load_heldout
from adallava.inference.answering import ask
from adallava.io.hub import bundled_models, load_model

NAMES = ["tiny-llava", "tiny-adallava-l", "tiny-adallava-h"]
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
