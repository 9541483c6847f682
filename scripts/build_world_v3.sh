#!/usr/bin/env bash
# Builds the world-v3 models (issue 18) on a CPU: the v3 world (96 px images, 36 visual tokens), the
# tiny LLaVA trained from scratch (16 x 96 Llama), AdaLLaVA-L, AdaLLaVA-H and AdaLLaVA-L fine-tuned
# with PruMerge+ token selection, then the held-out report. Work goes to runs/v3/ (git-ignored).
#
# Resumable: run it again after an interruption and every finished stage is skipped (a world with its
# manifest, a model folder with its final model.safetensors); a stage that was interrupted resumes
# exactly from its newest checkpoint (`adallava train --resume latest`). Elapsed time of every run is
# appended to runs/v3/build-times.txt, so a build spread over several runs can still be totalled.
#   bash scripts/build_world_v3.sh          # ~2 h on an idle 2-core CPU from scratch
#   FRESH=1 bash scripts/build_world_v3.sh  # delete runs/v3 first
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # the virtualenv (.venv); its adallava and python come first on PATH below
VENV=${ADALLAVA_VENV:-.venv}
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # both cores of a 2-core CPU; use 1 if other work shares the machine
OUT=runs/v3
[ "${FRESH:-0}" = 1 ] && rm -rf "$OUT"
mkdir -p "$OUT"
start=$(date +%s)
trap 'echo "$(date -u +%FT%TZ) run of $(( $(date +%s) - start )) s (exit $?)" >>"$OUT/build-times.txt"' EXIT

world() {  # world DIR ARGS...: generate unless DIR holds a finished world
  local dir=$1; shift
  if [ -f "$dir/manifest.json" ]; then echo "== $dir: done"; return; fi
  rm -rf "$dir"
  adallava world generate --out "$dir" --layout v3 --no-progress "$@"
}

stage() {  # stage CONFIG OUTPUT_DIR: train, resume, or skip when the final model is there
  local config=$1 out=$2
  if [ -f "$out/model.safetensors" ]; then echo "== $out: done"; return; fi
  if compgen -G "$out/checkpoint-*" >/dev/null; then
    echo "== $out: resuming from its newest checkpoint"
    adallava train --config "$config" --resume latest --no-progress-bar
  else
    adallava train --config "$config" --no-progress-bar
  fi
}

world "$OUT/world-train" --split train --seed 0 --n 40000
world "$OUT/world-test" --split test --seed 1 --n 100
if [ ! -f "$OUT/tiny-init/model.safetensors" ]; then
  adallava world build-model --out "$OUT/tiny-init" --world "$OUT/world-train" --layers 16 --hidden 96 \
    --intermediate 256 --heads 4
fi
stage configs/world-v3/base.yaml "$OUT/tiny-llava"
stage configs/world-v3/adaptive-l.yaml "$OUT/tiny-adallava-l"
stage configs/world-v3/adaptive-h.yaml "$OUT/tiny-adallava-h"
stage configs/world-v3/adaptive-l-prumerge.yaml "$OUT/tiny-adallava-l-prumerge"
python scripts/world_report.py --world "$OUT/world-test" --base "$OUT/tiny-llava" \
  --adaptive-l "$OUT/tiny-adallava-l" --adaptive-h "$OUT/tiny-adallava-h" --out "$OUT/report"
echo "built the world-v3 models; this run took $(( $(date +%s) - start )) s (all runs: $OUT/build-times.txt)"
