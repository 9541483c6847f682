"""adallava: latency-adaptive multimodal LLMs on Hugging Face Llava (AdaLLaVA, and beyond)."""

from adallava.config import AdaptiveConfig
from adallava.llm import AdaLLM
from adallava.model import AdaLlava
from adallava.plan import ExecutionPlan

__all__ = ["AdaLLM", "AdaLlava", "AdaptiveConfig", "ExecutionPlan"]
__version__ = "0.1.0"
