#!/usr/bin/env bash
# Issue 26 on the GPU machine (2 x H200 when lent, else one): the seed's round at real size, as
# shipped (a) and the seed's way (b), the same list back to back, then (a) again with two more models.
# Run in the project root on the device, one step or more per device run:
#     bash tests/bench/device/gpu-round.sh STEP...
# Steps (each writes what it measured under $OUT, default /tmp/out):
#   shapes  random-weight models of real shapes in /tmp/shapes, built 6 at a time over the GPUs:
#           EXAONE-4.0-1.2B x 6, Qwen3-1.7B x 3, OLMoE-1B-7B (MoE), Qwen3-4B x 2, Llama-3.1-8B; a copy answering EOS at once, a copy that never loads; a MiniLM-shaped encoder
#   plan    `yard dna --dry-run` for (a) and (b), priced as measured and with the seed's node start
#   a       (a) tests/bench/device/dna.round.yaml as shipped; a host killed on qwen17-s1 (spot interruption)
#   b       (b) the same with hosts.fresh_per_model=true, store /tmp/round-b, the same kill
#   b1, b2  (b) in two halves on stores of their own (/tmp/round-b1, -b2), for two short sessions: see B1, B2
#   rerun   (a) again on its store with exaone-s4 and exaone-s5 added: only those are new work
#   cost    `yard cost` of both stores (tables, csv, plot)
#   enginedie item 5: a host's vLLM engine processes killed while it starts: noticed within a minute, retried
#   identity  item 4: an identity recipe of exaone-s0, 3 trials, each evaluated by vLLM on 183 prompts x
#           256 new tokens, then the timing phase, each visit a fresh vLLM process (2 rounds, 183 x 512
#           tokens; tests/bench/device/sweep.identity.vllm.yaml): speed_norm should be 0 +- 0.02
#   serve   item 6: tests/bench/serve/bench_serve_vllm.py, yard serve vs vLLM's own server on exaone-s0, 3 runs
#   genspeed  item 3: bare vLLM against the warm host's vLLM path, 5 runs each, 40 probes x 256 tokens at
#           once, on the 1.2B and 8B shapes, in both engine modes (tests/bench/bench_vllm_dna.py)
#   (env) SHAPE_IDS=REGEX builds only the shapes whose "arch id seed" line matches; GENSPEED_SHAPES="A B"
#           and GENSPEED_HOST_MODE_ONLY=1 (the host's engine mode, --mp 1, only) narrow genspeed to what is missing
#   bg STEP...   those steps in the background (setsid: they outlive the device call, not the machine)
#   poll SECS    wait for them up to SECS, bring back what they wrote so far (keep calling it: the
#                machine goes back after 30 s without a call)
# A round is longer than one 10-minute device call, so:  bg shapes plan a b rerun cost,  then
# poll 560  until it says done. On one H200 (30 device-minutes a session) (a) with its rerun is ~16 min
# and (b) ~25: there, one session runs  bg shapes plan a rerun cost  and the next  bg shapes b cost.
# On one H100, shapes, plans, (a), its rerun and cost took 17.5 min (2026-12-06); (a) exists on both cards,
# so (b) or its halves pair with the (a) of the card they run on.
# A session whose budget failed starts have eaten (about 90 s each) picks steps by device-minutes on one
# GPU: staging 1-1.5 (6 calls), shapes 0.5-2 (with SHAPE_IDS), serve 7-8.5 a run, identity 13.5 on the H100
# (2026-12-06: the trials 5.7, then 8 timing visits in fresh processes 7.4) and genspeed ~6 a shape in the
# host's mode only; on the H100 (2026-12-06) b1 took 14 (plan 0.5, `yard dna` 13.5; its shapes 0.9) and b2
# 12.7 (plan 0.7, `yard dna` 12.0; its shapes 1.0); a Serve run 4.9-6 at 512 requests a row, 8.5 at 32 a
# client (2026-12-06, three runs 25.4). Call again within 30 s of a poll's return: an idle machine goes back,
# and the next call starts a bare one.
# Both runs start with an empty vLLM compile cache (a cold machine). (b) keeps the cache between its
# own models, which a fresh spot node would not have: that favours (b), so the comparison is conservative.
# Needs: vLLM in /tmp/vllm-site (../shared/device/vllm), Ray in /tmp/site (stage-yard-deps.sh),
# llm-dna (.dev-wheels/extra).
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:/tmp/site:/tmp/vllm-site${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_USE_FLASHINFER_SAMPLER=0 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 YARD_LIVE=0
[ -d /usr/local/cuda ] && export CUDA_HOME=/usr/local/cuda
yard() { python3 -m cluster "$@"; }
CFG=tests/bench/device/dna.round.yaml
NEW='models=[exaone-s0,exaone-s1,exaone-s2,exaone-s3,qwen17-s0,qwen17-s1,qwen17-s2,qwen4-s0,qwen4-s1,llama8-s0,olmoe-s0,exaone-eos,exaone-broken,exaone-s4,exaone-s5]'
KILL_MODEL=qwen17-s1
# (b)'s halves (steps b1, b2), 14 and 12.7 minutes on one H100 (header); their shapes: SHAPE_IDS='exaone-s[0-3] |qwen4-s0'
# for b1 and SHAPE_IDS='exaone-s0 |qwen17|qwen4-s1|llama8|olmoe' for b2 (exaone-s0: the faulty copies' source)
B1='models=[exaone-s0,exaone-s1,exaone-s2,exaone-s3,qwen4-s0,exaone-eos,exaone-broken]'
B2='models=[qwen17-s0,qwen17-s1,qwen17-s2,qwen4-s1,llama8-s0,olmoe-s0]'
gpus=${GPUS:-$(nvidia-smi -L | wc -l)}  # GPUS=2 EXTRA="engine=hf": a CPU rehearsal with tiny shapes

sample_gpus() {  # sample_gpus FILE [PROCS]: nvidia-smi's processes every 5 s until killed; with PROCS, also
  # vLLM's processes on the host (pid, parent, CPU %, title): an engine left running by an earlier one
  while true; do
    { echo "== $(date +%T)"; nvidia-smi --query-compute-apps=pid,gpu_bus_id,used_memory --format=csv,noheader || true
      if [ -n "${2:-}" ]; then ps -eo pid,ppid,pcpu,args | grep -E "VLLM::|EngineCore" | grep -v grep || true; fi; } >> "$1"
    sleep 5
  done
}
cold() { rm -rf "${VLLM_CACHE_ROOT:-$HOME/.cache/vllm}"; }
round() {  # round NAME STORE [yard dna args...]: one DNA job, the kill watcher beside it, timings
  local name=$1 store=$2; shift 2
  sample_gpus "$OUT/$name-gpus.txt" & local sampler=$!
  python3 tests/bench/device/round_kill.py --store "$store" --model $KILL_MODEL --out "$OUT/$name-kill.txt" \
    > "$OUT/$name-kill.log" 2>&1 & local killer=$!
  local t0; t0=$(date +%s.%N)
  set +e
  yard dna $CFG ${EXTRA:-} storage.uri="$store" hosts.max_hosts="$gpus" "$@" --accept-suspicious > "$OUT/$name-run.txt" 2>&1
  echo "exit $?" >> "$OUT/$name-run.txt"
  set -e
  echo "wall_s $(python3 -c "import time; print(round(time.time() - $t0, 1))")" | tee "$OUT/$name-wall.txt"
  kill $sampler 2>/dev/null || true; kill $killer 2>/dev/null || true
  tail -45 "$OUT/$name-run.txt"; cat "$OUT/$name-kill.txt" 2>/dev/null || echo "(no kill)"
  mkdir -p "$OUT/$name-store"
  find "$store" \( -name "*.md" -o -name "outcome.json" -o -name "*.csv" -o -name "ledger*.json*" -o -name "job.json" \) \
    -size -2M -exec cp --parents {} "$OUT/$name-store" \; 2>/dev/null || true
  for log in "$store"/logs/*.log; do [ -e "$log" ] && tail -c 2000000 "$log" > "$OUT/$name-$(basename "$log")"; done
}

idx=0
for step in "$@"; do
  idx=$((idx + 1))
  echo "=== $step $(date +%T)"
  case $step in
  shapes)
    nvidia-smi --query-gpu=index,pci.bus_id,name,memory.total --format=csv,noheader | tee "$OUT/gpus.csv"
    df -h /tmp | tail -1
    # the one-GPU kind has 64 GB of disk for 74 GB of shapes: the two largest go to /dev/shm (RAM), linked in
    mkdir -p /tmp/shapes
    if [ "$(df --output=avail -BG /tmp | tail -1 | tr -dc 0-9)" -lt 90 ]; then
      for id in llama8-s0 olmoe-s0; do mkdir -p /dev/shm/shapes/$id; ln -sfn /dev/shm/shapes/$id /tmp/shapes/.$id.tmp; done
    fi
    # one process per model, 6 at a time over the GPUs (a build is ~10 s of imports and ~10-30 s of work)
    { for s in 0 1 2 3 4 5; do echo "exaone-4.0-1.2b exaone-s$s $s"; done
      for s in 0 1 2; do echo "qwen3-1.7b qwen17-s$s $s"; done
      echo "qwen3-4b qwen4-s0 0"; echo "qwen3-4b qwen4-s1 1"; echo "llama-3.1-8b llama8-s0 0"; echo "olmoe-1b-7b olmoe-s0 0"
    } | grep -E "${SHAPE_IDS:-.}" | awk -v g="$gpus" '{print (NR - 1) % g, $0}' \
      | xargs -P 6 -L 1 sh -c 'CUDA_VISIBLE_DEVICES=$0 python3 -m cluster zoo shape $1 --out /tmp/shapes --device cuda --id $2 --seed $3' \
      > "$OUT/shapes.txt" 2>&1
    python3 tests/bench/device/round_models.py eos /tmp/shapes exaone-s0 exaone-eos >> "$OUT/shapes.txt" 2>&1
    python3 tests/bench/device/round_models.py broken /tmp/shapes exaone-s0 exaone-broken >> "$OUT/shapes.txt" 2>&1
    python3 tests/bench/device/round_models.py encoder /tmp/shapes/minilm-l6-shape >> "$OUT/shapes.txt" 2>&1
    grep -v "Warning\|warn(" "$OUT/shapes.txt" | grep -E "written|EOS|hidden_size|encoder" | tail -20
    cp /tmp/shapes/models.yaml "$OUT/shapes-models.yaml"; du -sh /tmp/shapes; df -h /tmp | tail -1 ;;
  plan)
    for run in a b; do
      extra=(); [ $run = b ] && extra=(hosts.fresh_per_model=true)
      yard dna $CFG ${EXTRA:-} hosts.max_hosts="$gpus" "${extra[@]}" --dry-run > "$OUT/plan-$run.txt" 2>&1 || true
      yard dna $CFG ${EXTRA:-} hosts.max_hosts="$gpus" "${extra[@]}" cost.prices=configs/prices.seed.yaml --dry-run \
        > "$OUT/plan-$run-seed.txt" 2>&1 || true
    done
    tail -n 25 "$OUT/plan-a.txt" "$OUT/plan-b-seed.txt" ;;
  a) cold; round a /tmp/round-a ;;
  b) cold; round b /tmp/round-b hosts.fresh_per_model=true ;;
  b1|b2)  # (b) in two halves, for sessions with less than (b)'s ~25 device-minutes: the seed's way shares
    # nothing between models (a fresh host each), so (b)'s cost is the sum of its halves' ledgers. Each half
    # starts with an empty compile cache, which costs (b) one compile more than one run would (not in its favour).
    half=$([ $step = b1 ] && echo "$B1" || echo "$B2")
    yard dna $CFG ${EXTRA:-} storage.uri=/tmp/round-$step hosts.max_hosts="$gpus" hosts.fresh_per_model=true "$half" \
      --dry-run > "$OUT/plan-$step.txt" 2>&1 || true
    tail -n 22 "$OUT/plan-$step.txt"
    kill_model=$KILL_MODEL; [[ $half == *$KILL_MODEL* ]] || kill_model=none
    cold; KILL_MODEL=$kill_model round $step /tmp/round-$step hosts.fresh_per_model=true "$half" ;;
  rerun)
    yard dna $CFG ${EXTRA:-} storage.uri=/tmp/round-a hosts.max_hosts="$gpus" "$NEW" --dry-run > "$OUT/plan-rerun.txt" 2>&1 || true
    tail -20 "$OUT/plan-rerun.txt"
    KILL_MODEL=none round rerun /tmp/round-a "$NEW" ;;
  cost)
    for s in a b b1 b2; do
      [ -d /tmp/round-$s ] || continue
      yard cost --store /tmp/round-$s --out "$OUT/cost-$s" 2>&1 | tail -40 | tee "$OUT/cost-$s.txt" || true
    done ;;
  genspeed)
    for shape in ${GENSPEED_SHAPES:-exaone-4.0-1.2b llama-3.1-8b}; do
      modes=("--mp 1"); [ -n "${GENSPEED_HOST_MODE_ONLY:-}" ] || modes+=("--mp 0 --in-process")
      for mode in "${modes[@]}"; do
        tag="$shape-mp${mode:5:1}"
        python3 tests/bench/bench_vllm_dna.py --shape $shape --models 1 --out /dev/shm/gen-shapes --store /tmp/gen-store \
          --parts build,bare,hostrep --repeats 5 --prompts 40 --new-tokens 256 $mode --json "$OUT/genspeed-$tag.json" \
          --encoder /tmp/shapes/minilm-l6-shape \
          > "$OUT/genspeed-$tag.txt" 2>&1 || true
        grep -E "^bound|^bare vLLM|^host, " "$OUT/genspeed-$tag.txt" | sed "s/^/$tag: /"
      done
    done ;;
  serve)  # item 6: yard serve (the engine in the ingress's replica, ingress auto) against vLLM's own server,
    # exaone-s0 (the 1.2B shape), 16 and 64 clients; SERVE_RUNS runs of the command (default 3), 3 rounds each;
    # SERVE_ARGS (default --ray-serve-mode direct: HAProxy, no proxy actor; the proxy's path added ~80 ms a request).
    # 32 requests per client a row (512 at 16 clients, 2048 at 64) since 2026-12-06's tenth attempt; runs 1-5 had
    # 512 at both, 3-4 s rounds at 64 clients (SERVE_REQS='--requests 512' repeats those)
    for i in $(seq 1 "${SERVE_RUNS:-3}"); do
      python3 tests/bench/serve/bench_serve_vllm.py --registry /tmp/shapes/models.yaml --model exaone-s0 \
        --parts vllm,yard,handle --clients 16 64 ${SERVE_REQS:---per-client 32} --rounds 3 --max-tokens 128 --share 0.3 ${SERVE_ARGS:---ray-serve-mode direct} \
        > "$OUT/serve-$i.txt" 2>&1 || true
      tail -c 20000 "$OUT/vllm-server.log" > "$OUT/serve-$i-vllm-server.log" 2>/dev/null || true; rm -f "$OUT/vllm-server.log"
      grep -E "GET /health|clients: |^path|^(vllm|yard|handle) " "$OUT/serve-$i.txt" | sed "s/^/run $i: /"
    done ;;
  enginedie)  # item 5: exaone-s0's vLLM processes SIGKILLed 15 s into its engine start (the host lives):
    # the host must notice within a minute and retry the model, not wait for the 30-min load-stall limit
    rm -rf /tmp/enginedie
    python3 tests/bench/device/round_kill.py --store /tmp/enginedie --model exaone-s0 --engine-only --after-s 15 \
      --out "$OUT/enginedie-kill.txt" > "$OUT/enginedie-kill.log" 2>&1 &
    killer=$!
    yard dna $CFG ${EXTRA:-} storage.uri=/tmp/enginedie hosts.max_hosts=1 'models=[exaone-s0,exaone-s1]' \
      --accept-suspicious > "$OUT/enginedie-run.txt" 2>&1 || true
    kill $killer 2>/dev/null || true
    cat "$OUT/enginedie-kill.txt" 2>/dev/null || echo "(nothing killed)"
    grep -hE "engine died|retrying|EngineDied" /tmp/enginedie/logs/*.log "$OUT/enginedie-run.txt" | cut -c1-300 | head -8
    grep -E "exaone-s[01] " "$OUT/enginedie-run.txt" | head -4 ;;
  identity)  # item 4: 3 identity trials of exaone-s0 evaluated by vLLM on 183 prompts x 256 tokens
    sample_gpus "$OUT/identity-procs.txt" procs & sampler=$!  # does a trial's engine outlive its evaluation?
    yard sweep tests/bench/device/sweep.identity.vllm.yaml ${EXTRA:-} > "$OUT/identity.txt" 2>&1 || true
    kill $sampler 2>/dev/null || true
    find /tmp/identity-store -name rows.json -exec cp {} "$OUT/identity-rows.json" \; 2>/dev/null || true
    python3 -c "import json; [print(r['trial_id'], r.get('status'), 'timed', r.get('sec_per_token'), r.get('speed_norm'), 'in trial', r.get('sec_per_token_in_trial'), r.get('speed_norm_in_trial')) for r in json.load(open('$OUT/identity-rows.json'))]" || tail -30 "$OUT/identity.txt"
    find /tmp/identity-store -path "*_state/sweeps/*/starts/*" -exec sh -c 'cat "$1"; echo' _ {} \; | tee "$OUT/identity-starts.txt" || true
    find /tmp/identity-store -name "*.log" -path "*logs*" -exec tail -c 300000 {} \; > "$OUT/identity-job.log" 2>/dev/null || true ;;
  bg)  # the remaining steps in a process session of their own: it outlives this device call (not the machine)
    shift_steps=("${@:$((idx + 1))}")
    mkdir -p /tmp/round-out; rm -f /tmp/round-out/.done
    OUT=/tmp/round-out setsid nohup bash -c "bash $0 ${shift_steps[*]}; echo \$? > /tmp/round-out/.done" \
      > /tmp/round-out/round.log 2>&1 < /dev/null &
    echo "running in the background: ${shift_steps[*]} (log /tmp/round-out/round.log; then: $0 poll SECONDS)"
    exit 0 ;;
  poll)  # wait up to the next argument's seconds for the background steps, then bring back what they wrote
    limit=${*:$((idx + 1)):1}; waited=0
    while [ ! -e /tmp/round-out/.done ] && [ "$waited" -lt "${limit:-540}" ]; do sleep 5; waited=$((waited + 5)); done
    for store in /tmp/round-a /tmp/round-b /tmp/round-b1 /tmp/round-b2; do  # a round still running: its ledger so far (the machine may go first)
      [ -d "$store" ] && [ ! -e /tmp/round-out/.done ] && mkdir -p "/tmp/round-out/live-$(basename "$store")" && \
        find "$store" \( -name "ledger*.json*" -o -name "job.json" -o -name "outcome.json" \) -size -2M \
          -exec cp --parents {} "/tmp/round-out/live-$(basename "$store")" \; 2>/dev/null || true
    done
    [ -d /tmp/identity-store ] && [ ! -e /tmp/round-out/.done ] && mkdir -p /tmp/round-out/live-identity && \
      find /tmp/identity-store \( -name "*.json" -o -name "*.jsonl" -o -name "*.csv" \) -size -2M \
        -exec cp --parents {} /tmp/round-out/live-identity \; 2>/dev/null || true  # a sweep still running: its trials so far
    tar czf "$OUT/round-out.tgz" -C /tmp/round-out . 2>/dev/null || true  # one file: a call brings back only a few
    grep -vE "Warning|warn\(|logging.cc" /tmp/round-out/round.log | tail -25
    [ -e /tmp/round-out/.done ] && echo "background steps done: exit $(cat /tmp/round-out/.done)" || echo "still running"
    exit 0 ;;
  [0-9]*) ;;  # poll's seconds
  *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
