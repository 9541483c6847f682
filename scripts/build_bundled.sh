#!/usr/bin/env bash
# Rebuilds the three bundled models from scratch on a CPU, in one run: the synthetic world, the tiny
# LLaVA trained from scratch (tiny-llava), AdaLLaVA-L and AdaLLaVA-H fine-tuned from it, the held-out
# report, and the packaged copies in src/adallava/bundled/. Work goes to runs/ (git-ignored).
#   bash scripts/build_bundled.sh            # 35 min on an idle 2-core CPU (see docs/training.md)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # the virtualenv (.venv); its adallava and python come first on PATH below
VENV=${ADALLAVA_VENV:-.venv}
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # both cores of a 2-core CPU; use 1 if other work shares the machine
start=$(date +%s)
rm -rf runs/world-train runs/world-test runs/tiny-init runs/tiny-llava runs/tiny-adallava-l runs/tiny-adallava-h
adallava world generate --out runs/world-train --seed 0 --n 40000 --split train --no-progress
adallava world generate --out runs/world-test --seed 1 --n 100 --split test --no-progress
adallava world build-model --out runs/tiny-init --world runs/world-train
adallava train --config configs/tiny-base.yaml --no-progress-bar
adallava train --config configs/tiny-adaptive-l.yaml --no-progress-bar
adallava train --config configs/tiny-adaptive-h.yaml --no-progress-bar
python scripts/world_report.py --world runs/world-test --base runs/tiny-llava \
    --adaptive-l runs/tiny-adallava-l --adaptive-h runs/tiny-adallava-h --out runs/report
python scripts/package_bundled.py --report runs/report/world_report.json --build-seconds $(( $(date +%s) - start )) \
    tiny-llava=runs/tiny-llava tiny-adallava-l=runs/tiny-adallava-l tiny-adallava-h=runs/tiny-adallava-h
echo "built the bundled models in $(( $(date +%s) - start )) s; report: runs/report/world_report.md"
