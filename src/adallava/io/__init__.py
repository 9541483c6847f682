"""Checkpoints: bundled names and loading (`hub`), initialisation from a HF Llava (`init`),
conversion of official AdaLLaVA checkpoints (`convert_official`, the driver, over `official_format`,
`official_weights`, `official_processor` and `weight_files`)."""
