"""Random adaptive models for the lean-engine tests: 6 layers, schedulers sharpened so that plans
differ per row and budget."""

import torch

from adallava import AdaLlava, AdaptiveConfig
from adallava.testing import tiny_llava

N = 6


def adaptive(seed=3, adaptive_config=None, **config):
    base = tiny_llava(seed=seed, num_layers=N, **config)
    torch.manual_seed(seed + 1)
    model = AdaLlava.from_base(base, adaptive_config or AdaptiveConfig()).eval()
    with torch.no_grad():
        model.scheduler.head.weight.mul_(50)  # plans that differ per row and budget
    model.scheduler_trained = True
    return model
