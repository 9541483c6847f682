"""adallava: latency-adaptive multimodal LLMs on Hugging Face Llava (AdaLLaVA, and beyond)."""

__version__ = "0.1.0"
