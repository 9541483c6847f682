"""The entry point that registers adallava with lmms-eval.

lmms-eval (0.7) builds its model registry from its own models, then from the Python entry points of
group `lmms_eval.models` (`lmms_eval.models.registry_v2.ModelRegistryV2.load_entrypoint_manifests`);
a payload may be a callable returning a `ModelManifest`. pyproject.toml declares

    [project.entry-points."lmms_eval.models"]
    adallava = "adallava.integrations.lmms.registration:model_manifest"

so `pip install adallava[lmms]` is all it takes for `lmms-eval --model adallava`. The model class is
imported only when lmms-eval resolves the name.
"""

from __future__ import annotations

MODEL_CLASS = "adallava.integrations.lmms.model.AdaLlavaLmms"


def model_manifest():
    """lmms-eval's manifest for model `adallava` (a simple model: it takes prompt text and images)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="adallava", simple_class_path=MODEL_CLASS)
