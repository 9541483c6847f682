"""PruMerge(+) inside the model: per-row visual token counts, exact splicing, costs, budgets."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

from adallava import AdaLlava, AdaptiveConfig
from adallava.engine.tokens import prumerge
from adallava.testing import IMAGE_TOKEN_ID, tiny_inputs, tiny_llava
from tests.helpers import assert_generates_as_one_at_a_time


@pytest.fixture(scope="module")
def pruned():
    base = tiny_llava(seed=4, image_size=48, patch_size=8)  # 36 patches: room for outliers
    torch.manual_seed(5)
    model = AdaLlava.from_base(base, AdaptiveConfig(token_selection="prumerge")).eval()
    with torch.no_grad():
        model.scheduler.head.weight.mul_(50)
    return base, model


def reference_tokens(base, pixel_values):
    """PruMerge computed outside the model: hooks on the last CLIP layer's q/k (feature layer -1)."""
    tower, captured = base.model.vision_tower, {}
    attention = tower.encoder.layers[-1].self_attn
    hooks = [
        attention.q_proj.register_forward_hook(lambda m, a, o: captured.__setitem__("q", o)),
        attention.k_proj.register_forward_hook(lambda m, a, o: captured.__setitem__("k", o)),
    ]
    with torch.no_grad():
        states = tower(pixel_values, output_hidden_states=True).hidden_states[-1][:, 1:]
    for hook in hooks:
        hook.remove()
    merged = prumerge(states, captured["q"], captured["k"])
    with torch.no_grad():
        return [base.model.multi_modal_projector(row) for row in merged.unpad()]


def test_selected_tokens_are_spliced_exactly(pruned):
    base, model = pruned
    inputs = tiny_inputs(base.config, [4, 7, 3], "left", seed=6)
    with torch.no_grad():
        out = model(**inputs)
    tokens = reference_tokens(base, inputs["pixel_values"])
    counts = [len(t) for t in tokens]
    assert len(set(counts)) > 1  # rows keep different numbers of visual tokens
    embed = base.get_input_embeddings()
    for row, selected in enumerate(tokens):
        ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
        text = ids[ids != IMAGE_TOKEN_ID]
        with torch.no_grad():
            sequence = torch.cat([selected, embed(text)])[None]  # the image comes first in these prompts
            expected = base(inputs_embeds=sequence).logits[0]
        mask = out.attention_mask[row].bool()
        torch.testing.assert_close(out.logits[row][mask], expected, atol=1e-4, rtol=0)
    assert out.cost.vision.shape == (3,)


def test_cost_of_a_pruned_request_is_what_torch_counts(pruned):
    base, model = pruned
    inputs = tiny_inputs(base.config, [6], seed=7)
    with torch.no_grad():
        out = model(**inputs, budget=0.75)
        with FlopCounterMode(display=False) as counter:
            model(**inputs, budget=0.75)
    assert out.cost.total.item() == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_budgets_are_fractions_of_the_pruned_request(pruned):
    base, model = pruned
    inputs = tiny_inputs(base.config, [6, 6], "left", seed=8)
    with torch.no_grad():
        pruned_out = model(**inputs, budget=[0.5, 0.75])
        unpruned = AdaLlava.from_base(base, AdaptiveConfig()).eval()
        unpruned_out = unpruned(**inputs, budget=[0.5, 0.75])
    assert (pruned_out.full_cost.llm < unpruned_out.full_cost.llm).all()
    assert torch.allclose(
        pruned_out.cost.llm / pruned_out.full_cost.llm, torch.tensor([0.5, 0.75], dtype=torch.float64)
    )


def test_generation_with_selection_is_batch_invariant(pruned):
    base, model = pruned
    inputs = tiny_inputs(base.config, [3, 8, 5], "right", seed=9)
    assert_generates_as_one_at_a_time(model, inputs, [0.5, 1.0, 0.75])


def test_towers_without_cls_are_refused_with_the_alternative():
    text = tiny_llava().config.text_config
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_seq_length=16,
    )
    base = LlavaForConditionalGeneration(config).eval()
    model = AdaLlava.from_base(base, AdaptiveConfig(token_selection="prumerge")).eval()
    inputs = tiny_inputs(config, [4], seed=10)
    with pytest.raises(ValueError, match="token_selection='none'"), torch.no_grad():
        model(**inputs)


# ---- which PruMerge+ grid a name and a converted checkpoint get (issue 14) -----------------------


def test_token_selection_names_are_checked_and_each_has_a_method():
    # Bug: an unknown name (e.g. 'prumerge+llava') accepted, or a name with no method behind it.
    from adallava.core.config import TOKEN_SELECTIONS
    from adallava.engine.tokens.selection import METHODS

    allowed = r"\('none', 'prumerge', 'prumerge\+', 'prumerge\+offset'\)"
    with pytest.raises(ValueError, match=f"token_selection must be one of {allowed}, got 'prumerge\\+llava'"):
        AdaptiveConfig(token_selection="prumerge+llava")
    assert set(METHODS) == set(TOKEN_SELECTIONS) - {"none"}


def test_converted_prumerge_plus_checkpoint_samples_adallavas_grid(tmp_path):
    # Bug: an official *-prumerge-plus checkpoint converted to the LLaVA-PruMerge 9d6586e grid, so it
    # sees other visual tokens than it was trained on; or the authors' config accepting our own name.
    import json

    from adallava.engine.tokens.selection import METHODS
    from adallava.io.official_format import adaptive_config_from_official, read_official_config
    from tests.engine.test_prumerge import HAND_ADALLAVA_GRID, HAND_OUTLIERS, hand_inputs
    from tests.io.test_convert_official import official_config

    config = official_config("L", None, "float32") | {"token_selecting": "prumerge+"}
    adaptive = adaptive_config_from_official(config)
    assert adaptive.token_selection == "prumerge+"
    merged = METHODS[adaptive.token_selection](*hand_inputs())
    spatial = [p for p in HAND_ADALLAVA_GRID if p not in HAND_OUTLIERS]  # by hand, test_prumerge.py
    assert merged.kept_indices[0].tolist() == HAND_OUTLIERS + spatial
    (tmp_path / "config.json").write_text(json.dumps(config | {"token_selecting": "prumerge+offset"}))
    with pytest.raises(ValueError, match="token_selecting must be one of .*got 'prumerge\\+offset'"):
        read_official_config(tmp_path)
