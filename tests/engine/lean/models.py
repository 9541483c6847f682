"""Shared pieces of the lean-engine tests: random adaptive models (6 layers, schedulers sharpened so
that plans differ per row and budget) and a stopping criterion that stops one row."""

import torch

from adallava import AdaLlava, AdaptiveConfig
from adallava.engine.hf_compat import StoppingCriteria
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


class StopRow(StoppingCriteria):
    """Stops one row after `after` new tokens (a client that left)."""

    def __init__(self, row, prompt_length, after):
        self.row, self.prompt_length, self.after = row, prompt_length, after

    def __call__(self, input_ids, scores, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done[self.row] = input_ids.shape[1] - self.prompt_length >= self.after
        return done
