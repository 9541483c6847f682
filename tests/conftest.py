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
