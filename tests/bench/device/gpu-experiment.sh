#!/usr/bin/env bash
# Issue 24 on the GPU machine: `yard run` with 4 conditions at num_gpus 0.25 on one H200, each
# loading a real-size shape (random weights) and generating, with `yard status` GPU ids and memory
# sampled beside nvidia-smi every 2 s; then a condition that needs more GPU memory than the GPU has, refused
# at plan time. Run in the project root on the device, one step per device run:
#     bash tests/bench/device/gpu-experiment.sh STEP...
# Steps (each writes what it measured under $OUT, default /tmp/out):
#   shapes   qwen3-1.7b and exaone-4.0-1.2b random-weight shapes in /tmp/shapes
#   run4     yard run: 2 shapes x 2 framings, num_gpus 0.25 each, experiments/bankroll.py on cuda
#   refuse   the same experiment asking gpu_memory_gib 500: refused before Ray (exit 2, one line)
# Needs: Ray in /tmp/site (tests/bench/device/stage-yard-deps.sh, two runs before this one).
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 YARD_LIVE=0
yard() { python3 -m cluster "$@"; }
STATUS_PY='
from cluster.ops.status import collect
from cluster.store.storage import open_store
for job in collect(open_store("/tmp/yard-store")):
    for t in job.tasks:
        if t.status == "RUNNING" and t.task != "main":
            print("status", t.task, "pid", t.pid, "gpu_ids", t.gpu_ids, "gpu_mem_gib", t.gpu_mem_gib, t.progress, t.phase)
'
sample_gpus() {  # sample_gpus FILE: yard status and nvidia-smi's processes every 5 s until killed
  while true; do
    { echo "== $(date +%T)"; nvidia-smi --query-compute-apps=pid,gpu_bus_id,used_memory --format=csv,noheader || true
      python3 -c "$STATUS_PY" 2>/dev/null || true; } >> "$1"
    sleep 2
  done
}
ARGS=(configs/experiment.demo.yaml zoo=null registry=[/tmp/shapes/models.yaml] storage.uri=/tmp/yard-store
      ray.dashboard=false 'grid.model=[qwen3-1.7b-shape,exaone-4.0-1.2b-shape]' 'grid.framing=[plain,goal]'
      'command=[python,experiments/bankroll.py,--model,"{model}",--framing,"{framing}",--rounds,"40",--max-new-tokens,"256"]'
      resources.num_cpus=2 resources.num_gpus=0.25)
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
  shapes)
    nvidia-smi --query-gpu=index,pci.bus_id,name,memory.total --format=csv,noheader | tee "$OUT/gpus.csv"
    yard zoo shape qwen3-1.7b --out /tmp/shapes --device cuda
    yard zoo shape exaone-4.0-1.2b --out /tmp/shapes --device cuda
    cp /tmp/shapes/models.yaml "$OUT/shapes-models.yaml" ;;
  run4)
    sample_gpus "$OUT/run4-gpus.txt" & sampler=$!
    /usr/bin/time -v python3 -m cluster run "${ARGS[@]}" 2>&1 | tail -60 | tee "$OUT/run4.txt" || true
    kill $sampler || true
    mkdir -p "$OUT/run4-store" && cp -r /tmp/yard-store/experiments "$OUT/run4-store/" || true
    find "$OUT/run4-store" -name "*.log" -size +1M -delete || true ;;
  refuse)
    set +e; python3 -m cluster run "${ARGS[@]}" resources.num_gpus=null resources.gpu_memory_gib=500 \
      > "$OUT/refuse.txt" 2>&1; echo "exit $?" >> "$OUT/refuse.txt"; set -e; cat "$OUT/refuse.txt" ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
