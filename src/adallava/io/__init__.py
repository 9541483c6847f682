"""Checkpoints: bundled names and loading (`hub`), initialisation from a HF Llava (`init`),
conversion of official AdaLLaVA checkpoints (`convert_official`)."""
