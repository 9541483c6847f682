"""The seam to transformers internals (adallava.hf_compat), checked on the installed transformers.

These are the tests that break first when a transformers release changes what the seam relies on:
the name of the KV cache, how generate finds it in a step's output, the signatures we call.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
from transformers import GenerationMixin, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from adallava import AdaLlava, AdaptiveConfig
from adallava.engine import hf_compat
from adallava.engine.llava import AdaGenerateOutput, AdaLlavaOutput
from adallava.testing import tiny_inputs, tiny_llava

pytestmark = pytest.mark.core
SRC = Path(__file__).resolve().parents[2] / "src" / "adallava"


@pytest.fixture(scope="module")
def model():
    return AdaLlava.from_base(tiny_llava(seed=3), AdaptiveConfig(switches="layer")).eval()


def test_the_cache_name_is_the_one_transformers_decoder_layers_and_masks_take():
    # Bug caught: a release renames the cache keyword again and the seam keeps passing the old one
    # (HF layers then silently run without a cache: every decode step recomputes nothing cached).
    assert hf_compat.CACHE_NAME in inspect.signature(LlamaDecoderLayer.forward).parameters
    from transformers.masking_utils import create_masks_for_generate

    assert hf_compat.CACHE_NAME in inspect.signature(create_masks_for_generate).parameters


def test_ada_llava_output_round_trips_its_cache_through_hf_generate_bookkeeping(model):
    # Bug caught: the output declares the cache under a name generate does not read (5.24: every
    # step of generate then ran without a cache), or cannot be built at all (5.24's metaclass).
    cache = hf_compat.new_cache(model.text_config)
    out = AdaLlavaOutput(logits=torch.zeros(1, 1, 4), **hf_compat.cache_kwargs(cache))
    assert hf_compat.output_cache(out) is cache
    assert hf_compat.CACHE_NAME in list(out)  # the real key, not a renamed lookup
    kwargs = GenerationMixin._update_model_kwargs_for_generation(
        model, out, {"attention_mask": torch.ones(1, 3, dtype=torch.long)}
    )  # HF's own update, not ours: it must find the cache where we put it
    assert kwargs[hf_compat.CACHE_NAME] is cache


def test_generate_output_carries_the_cache_and_our_fields(model):
    # Bug caught: AdaGenerateOutput loses HF's cache field or our plan when built from generate's items.
    cache = hf_compat.new_cache(model.text_config)
    out = AdaGenerateOutput(sequences=torch.ones(1, 2, dtype=torch.long), **hf_compat.cache_kwargs(cache),
                            prefill_tokens=torch.tensor([2]))  # fmt: skip
    assert hf_compat.output_cache(out) is cache
    assert out.prefill_tokens.tolist() == [2]


def test_generate_reuses_the_cache_between_steps(model):
    # Bug caught: generate drops the cache between steps, so each step re-runs the whole sequence
    # (same tokens but no cache: the forward would see past_length 0 at every step).
    config = model.config
    inputs = tiny_inputs(config, [5], "left", seed=1)
    seen = []

    def spy(module, args, kwargs):
        cache = hf_compat.resolve_cache(kwargs.get("past_key_values"), kwargs.get("cache"))
        seen.append(0 if cache is None else cache.get_seq_length())

    handle = model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        with torch.no_grad():
            model.generate(
                **inputs, budget=0.75, max_new_tokens=4, do_sample=False, min_new_tokens=4, engine="hf"
            )
    finally:
        handle.remove()
    assert seen[0] == 0 and all(length > 0 for length in seen[1:]) and len(seen) == 4
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_forward_takes_the_cache_under_either_name_but_not_two_different_ones(model):
    # Bug caught: callers on transformers < 5.24 (past_key_values=) and >= 5.24 (cache=) disagree.
    a, b = hf_compat.new_cache(model.text_config), hf_compat.new_cache(model.text_config)
    assert hf_compat.resolve_cache(a, None) is a and hf_compat.resolve_cache(None, a) is a
    assert hf_compat.resolve_cache(a, a) is a
    with pytest.raises(ValueError, match="not two different ones"):
        hf_compat.resolve_cache(a, b)


def test_attention_implementation_set_on_a_config_reaches_the_built_model():
    # Bug caught: the private attribute is renamed and tiny models silently use another kernel.
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                         vocab_size=10)  # fmt: skip
    hf_compat.set_attention_implementation(config, "eager")
    from transformers import LlamaForCausalLM

    assert hf_compat.attention_implementation(LlamaForCausalLM(config).config) == "eager"


# Uses of transformers internals that must stay inside the seam (issue 12).
INTERNALS = [
    r"transformers\.cache_utils",
    r"transformers\.masking_utils",
    r"transformers\.generation\.utils",
    r"transformers\.generation\.streamers",
    r"transformers\.utils import .*ModelOutput",
    r"transformers\.utils import .*is_torchvision_available",
    r"\b_attn_implementation\b",
    r"\blayer_idx\b",
    r"\b_update_model_kwargs_for_generation\b",
    r"\bDynamicCache\b",
    r"cache\.layers\b",
    r"\bloss_function\b",
    r"\bget_image_features\b",
    r"\bget_placeholder_mask\b",
    r"\b_supports_[a-z_]+\b",
    r"\b_init_weights\b",
    r"ImageProcessorPil\b",
]


def test_no_transformers_internals_outside_the_seam():
    # Bug caught: a new use of a transformers internal lands outside hf_compat, where the next
    # release breaks it without the seam's tests noticing.
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "hf_compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern in INTERNALS:
                if re.search(pattern, code):
                    offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, "transformers internals outside hf_compat:\n" + "\n".join(offenders)
