#!/usr/bin/env bash
# Regenerates RESULTS.md from the bundled models on the synthetic world's held-out test split:
# adallava eval for each model and method (each folder gets meta.json: command, commit, versions,
# machine; and the adaptive plans per input), then adallava report. Work goes to runs/results/.
#   bash scripts/make_results.sh          (or: make results)
# Needs the bundled models (bash scripts/build_bundled.sh) and the test world (runs/world-test).
set -euo pipefail
cd "$(dirname "$0")/.."
# the virtualenv (.venv); its adallava and python come first on PATH below. ADALLAVA_SKIP_SETUP=1 uses
# ADALLAVA_VENV as it is (e.g. a shared, already installed one) instead of syncing it to the lock.
[ "${ADALLAVA_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
VENV=${ADALLAVA_VENV:-.venv}
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORLD=${WORLD:-runs/world-test}
BUDGETS=${BUDGETS:-0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95,1.0}  # e.g. BUDGETS=0.5,0.75,1.0 for a quick look
OUT=runs/results
[ -f "$WORLD/manifest.json" ] || adallava world generate --out "$WORLD" --seed 1 --n 100 --split test --layout v3 --no-progress
common=(--data "$WORLD" --budgets "$BUDGETS" --batch-size 32 --threads 1 --no-progress)
adallava eval --model tiny-adallava-l --methods adaptive,early-exit,random,full "${common[@]}" --out $OUT/tiny-adallava-l
adallava eval --model tiny-adallava-h --methods adaptive "${common[@]}" --out $OUT/tiny-adallava-h
adallava eval --model tiny-llava --methods early-exit,full "${common[@]}" --out $OUT/tiny-llava
# Table 3: AdaLLaVA-L fine-tuned with PruMerge+ on (its adaptive config names the token selection), and the
# unpruned AdaLLaVA-L given PruMerge+ at inference only, never trained with it
adallava eval --model tiny-adallava-l-prumerge --methods adaptive "${common[@]}" --out $OUT/tiny-adallava-l-prumerge
adallava eval --model tiny-adallava-l --methods adaptive --token-selection prumerge+ "${common[@]}" \
    --out $OUT/tiny-adallava-l-prumerge-untrained
if [ ! -f runs/tiny-adallava-l-deterministic/adaptive_config.json ]; then  # the Table 2 ablation, ~5 min
  adallava train --config configs/tiny-adaptive-l-deterministic.yaml --model src/adallava/bundled/tiny-llava --no-progress-bar
fi
if [ -d runs/tiny-adallava-l-deterministic ]; then
  adallava eval --model runs/tiny-adallava-l-deterministic --methods adaptive "${common[@]}" \
      --out $OUT/tiny-adallava-l-deterministic
fi
PLOTS=results-plots  # committed beside RESULTS.md, which links to them
folders=$(find $OUT -mindepth 1 -maxdepth 1 -type d | sort)
rm -f $PLOTS/*.png $PLOTS/*.svg  # only this run's pictures; `adallava report` draws them all
# (accuracy x axis: LLM prefill FLOPs, the paper's convention; plan heatmaps from each plans_*.json)
adallava report --results $folders --plots $PLOTS --out RESULTS.md
echo "wrote RESULTS.md"
