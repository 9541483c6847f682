"""adallava: latency-adaptive multimodal LLMs on Hugging Face Llava (AdaLLaVA, and beyond).

The public names below load on first use, so `import adallava.core.cost` (plain Python) or
`adallava --version` does not import torch or transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AdaptiveConfig": "adallava.core.config",
    "ExecutionPlan": "adallava.core.plan",
    "AdaLlava": "adallava.engine.llava",
    "AdaLLM": "adallava.engine.llm",
    "SpeculativeConfig": "adallava.engine.lean.speculative",
}
__all__ = ["AdaLLM", "AdaLlava", "AdaptiveConfig", "ExecutionPlan", "SpeculativeConfig"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'adallava' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
