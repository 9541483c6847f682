# Shortcuts; each target is one documented script.
.PHONY: setup test bundled results

setup:
	bash scripts/setup.sh

test:
	python3 -m ruff check . && python3 -m pytest -q

bundled:  # rebuild the three bundled models from scratch (35 min on 2 idle CPU cores)
	bash scripts/build_bundled.sh

results:  # RESULTS.md from the bundled models on the synthetic world
	bash scripts/make_results.sh
