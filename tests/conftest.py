import pytest
import torch

from adallava.core.config import AdaptiveConfig
from adallava.engine.llava import AdaLlava
from adallava.testing import tiny_llava

torch.set_num_threads(1)  # deterministic, and polite to the other core


@pytest.fixture(scope="module")
def base_llava():
    return tiny_llava(seed=0)


@pytest.fixture(scope="module")
def ada(base_llava):
    torch.manual_seed(1)
    model = AdaLlava.from_base(base_llava, AdaptiveConfig(switches="layer"))
    # A random head gives near-equal logits; scale it so plans differ clearly across inputs.
    with torch.no_grad():
        model.scheduler.head.weight.mul_(50)
    return model.eval()


@pytest.fixture(autouse=True)
def _fresh_cost_caches():
    """The cost model memoises layer, vision and per-row prices; start each test with empty caches, so
    a test never passes on a number an earlier test computed (and tools that trace which test runs
    which function, such as mutmut, see every call)."""
    from adallava.core.cost import flops, pricing

    for cached in (flops._layer, flops._vision, pricing._prefill_cost, pricing._decode_step_cost):
        cached.cache_clear()
