#!/usr/bin/env bash
# One prepared visit to a GPU machine: everything a GPU is for, in one command.
#
#   bash bench/gpu.sh prepare                # here, once: the compact QM9 cache the GPU machine lacks (.gpu/)
#   bash bench/gpu.sh run OUT [MINUTES]      # there (device tool, carry [".gpu"]), MINUTES = the whole visit (9)
#
# "run" does, in order, writing everything under OUT (at most 8 files come back, none deeper than
# OUT/a/b/file):
#   1. the CUDA tests (tests/core/test_cuda.py): noise, sampling and bf16 training on the GPU;
#   2. the training- and sampling-throughput bench at the reference size (float32, bf16 autocast,
#      bf16 + torch.compile), then the images U-Net/DiT speed bench, printed to OUT/bench.txt;
#   3. training of the shipped QM9 run (domains/molecules/runs/qm9, resumable: weights, EMA,
#      optimizer) continued on the GPU for the minutes left, its new checkpoint copied flat to
#      OUT/ckpt/ and its log to OUT/ckpt/log.jsonl: put them back into domains/molecules/runs/qm9
#      with `bash bench/gpu.sh adopt OUT`.
# The GPU machine has python3 with torch, e3nn, torch-geometric, scipy, typer, rich and safetensors;
# it lacks qm9pack (the cache replaces it) and RDKit (training and the speed bench do not need it).
set -uo pipefail
cd "$(dirname "$0")/.."
RUN_SRC=domains/molecules/runs/qm9

prepare() {
  mkdir -p .gpu/qm9
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  .venv/bin/python - <<'EOF'
import numpy as np
from sciffusion.domains.molecules.data import default_cache_dir, load_qm9_arrays
load_qm9_arrays("train")  # builds the cache from qm9pack when missing
with np.load(default_cache_dir() / "qm9.npz", allow_pickle=False) as z:
    a = {k: z[k] for k in z.files}
a["positions"], a["properties"] = a["positions"].astype(np.float32), a["properties"].astype(np.float32)
np.savez_compressed(".gpu/qm9/qm9.npz", **a)
print("wrote .gpu/qm9/qm9.npz (float32, compressed)")
EOF
}

run() {
  local out=${1:?usage: bench/gpu.sh run OUT [MINUTES]} total=${2:-9}
  local start
  start=$(date +%s)
  mkdir -p "$out/ckpt"
  local py=${PYTHON:-python3}
  mkdir -p /tmp/sciffusion-pkg && ln -sfn "$PWD" /tmp/sciffusion-pkg/sciffusion
  export PYTHONPATH=/tmp/sciffusion-pkg${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  export SCIFFUSION_CACHE="$PWD/.gpu"
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$out/env.txt"

  echo "== 1. CUDA tests" | tee "$out/tests.txt"
  $py -m pytest -q -p no:cacheprovider -m "not slow" tests/core/test_cuda.py 2>&1 | tail -n 30 | tee -a "$out/tests.txt"

  echo "== 2. throughput" | tee "$out/bench.txt"
  timeout 240 $py bench/molecules.py --speed-only --no-append --train-steps 20 --sample-steps 50 2>&1 \
    | tail -n 40 | tee -a "$out/bench.txt"
  echo "== 2b. images throughput (U-Net and DiT; needs scikit-learn and scikit-image there)" | tee -a "$out/bench.txt"
  timeout 120 $py bench/images.py speed --seconds 3 2>&1 | tail -n 12 | tee -a "$out/bench.txt"

  local left=$(( total * 60 - ($(date +%s) - start) - 75 ))
  echo "== 3. training on for $(( left / 60 )) min" | tee "$out/train.txt"
  if [ "$left" -gt 60 ] && [ -d "$RUN_SRC/checkpoints" ]; then
    local run=/tmp/qm9-run
    rm -rf "$run" && cp -r "$RUN_SRC" "$run"
    local minutes
    minutes=$(awk "BEGIN { print $left / 60 }")
    # the run's cosine schedule ended at its last train.steps: raising it by 20,000 (about what an
    # H200 does in the minutes left at this size) restarts the decay from mid-cycle and anneals
    # again by the end of the visit; the time budget stops it either way, so check the adopted
    # model before shipping it
    local step_now
    step_now=$(ls -d "$run"/checkpoints/step-* | sort | tail -n 1 | sed 's/.*step-0*//')
    $py -m sciffusion.cli train molecules --config "$run/config.json" --out "$run" --no-progress \
      "train.steps=$(( step_now + 20000 ))" "train.max_minutes=$minutes" 2>&1 | tail -n 5 | tee -a "$out/train.txt"
    local last
    last=$(ls -d "$run"/checkpoints/step-* | sort | tail -n 1)
    cp "$last"/* "$out/ckpt/" && cp "$run/log.jsonl" "$run/config.json" "$out/ckpt/"
    basename "$last" > "$out/ckpt/STEP"
  fi
}

adopt() {
  # the checkpoint a GPU visit sent back (OUT/ckpt) becomes the resumable run's latest one
  local src=${1:?usage: bench/gpu.sh adopt OUT}/ckpt
  local step
  step=$(cat "$src/STEP")
  rm -rf "$RUN_SRC/checkpoints" && mkdir -p "$RUN_SRC/checkpoints/$step"
  cp "$src"/*.safetensors "$src/checkpoint.json" "$RUN_SRC/checkpoints/$step/"
  cp "$src/log.jsonl" "$src/config.json" "$RUN_SRC/"
  echo "adopted $step into $RUN_SRC"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  adopt) shift; adopt "$@" ;;
  *) echo "usage: bash bench/gpu.sh prepare | run OUT [MINUTES] | adopt OUT" >&2; exit 2 ;;
esac
