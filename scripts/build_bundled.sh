#!/usr/bin/env bash
# Rebuilds the four bundled models from scratch on a CPU: the synthetic world (layout v3: 96 px images,
# 36 visual tokens), the tiny LLaVA trained from scratch (tiny-llava: a 16 x 96 Llama), then from it
# AdaLLaVA-L, AdaLLaVA-H and AdaLLaVA-L fine-tuned with PruMerge+ token selection, the held-out report,
# and the packaged copies in src/adallava/bundled/. Work goes to runs/ (git-ignored).
#
# Resumable: run it again after an interruption and every finished stage is skipped (a world with its
# manifest, a model folder with its final model.safetensors); an interrupted stage resumes exactly
# from its newest checkpoint (`adallava train --resume latest`). The elapsed time of every run is
# appended to runs/build-times.txt, so a build spread over several runs can still be totalled.
#   bash scripts/build_bundled.sh           # 109 min from a fresh clone on an idle 2-core CPU (docs/training.md)
#   FRESH=1 bash scripts/build_bundled.sh   # forget finished stages and start from scratch
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # the virtualenv (.venv); its adallava and python come first on PATH below
VENV=${ADALLAVA_VENV:-.venv}
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # both cores of a 2-core CPU; use 1 if other work shares the machine
MODELS=(tiny-llava tiny-adallava-l tiny-adallava-h tiny-adallava-l-prumerge)
if [ "${FRESH:-0}" = 1 ]; then
  rm -rf runs/world-train runs/world-test runs/tiny-init runs/report runs/build-times.txt
  for name in "${MODELS[@]}"; do rm -rf "runs/$name"; done
fi
mkdir -p runs
start=$(date +%s)
trap 'echo "$(date -u +%FT%TZ) run of $(( $(date +%s) - start )) s (exit $?)" >>runs/build-times.txt' EXIT

world() {  # world DIR ARGS...: generate unless DIR holds a finished world
  local dir=$1; shift
  if [ -f "$dir/manifest.json" ]; then echo "== $dir: done"; return; fi
  rm -rf "$dir"
  adallava world generate --out "$dir" --layout v3 --no-progress "$@"
}

stage() {  # stage RECIPE MODEL: train configs/RECIPE.yaml into runs/MODEL, resume it, or skip it when done
  local config=configs/$1.yaml out=runs/$2
  if [ -f "$out/model.safetensors" ]; then echo "== $out: done"; return; fi
  if compgen -G "$out/checkpoint-*" >/dev/null; then
    echo "== $out: resuming from its newest checkpoint"
    adallava train --config "$config" --resume latest --no-progress-bar
  else
    adallava train --config "$config" --no-progress-bar
  fi
}

world runs/world-train --split train --seed 0 --n 40000
world runs/world-test --split test --seed 1 --n 100
if [ ! -f runs/tiny-init/model.safetensors ]; then  # a 16 x 96 Llama (FFN 256, 4 heads) and a 2 x 128 CLIP
  adallava world build-model --out runs/tiny-init --world runs/world-train --layers 16 --hidden 96 \
    --intermediate 256 --heads 4
fi
stage tiny-base tiny-llava  # 6000 steps, ~75 min
for name in adaptive-l adaptive-h adaptive-l-prumerge; do stage "tiny-$name" "tiny-adallava-${name#adaptive-}"; done  # 600 steps, ~8 min each
python scripts/world_report.py --world runs/world-test --base runs/tiny-llava --adaptive-l runs/tiny-adallava-l \
  --adaptive-h runs/tiny-adallava-h --prumerge runs/tiny-adallava-l-prumerge --out runs/report
seconds=$(awk '{s += $4} END {print s + 0}' runs/build-times.txt 2>/dev/null || echo 0)
python scripts/package_bundled.py --report runs/report/world_report.json \
  --build-seconds $(( seconds + $(date +%s) - start )) \
  $(for name in "${MODELS[@]}"; do printf '%s=runs/%s ' "$name" "$name"; done)
echo "built the bundled models; this run took $(( $(date +%s) - start )) s (all runs: runs/build-times.txt);" \
  "report: runs/report/world_report.md"
