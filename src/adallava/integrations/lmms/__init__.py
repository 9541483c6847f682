"""adallava in lmms-eval (docs/lmms-eval.md): `pip install adallava[lmms]`, then

    lmms-eval --model adallava --model_args pretrained=tiny-adallava-l,budget=0.6 --tasks ...

* `registration.model_manifest`: the entry point (group `lmms_eval.models`) that registers the model;
* `model_args.ModelArgs`: the `--model_args` settings, checked before anything loads;
* `generation`: lmms-eval's generation settings and requests -> batches with a budget per row;
* `model.AdaLlavaLmms`: the lmms-eval model (imports lmms_eval; nothing else here does at import);
* `tasks` / `export`: the synthetic world's test split as lmms-eval tasks (`adallava world export`);
* `compare`: lmms-eval's logged answers -> the official prediction files, scored by `adallava score`.
"""
