#!/usr/bin/env bash
# Runs on the device machine (repo root as cwd). Steps, each one `run` call (see benchmarks/README.md):
#   stage N          copy wheel part N (carried in .gpu/cN) to /root/stage
#   install          join the parts, pip install --target /root/site, list vLLM's flags, make model + adapters
#   tune             tune vLLM's LoRA kernel tiles on this GPU (service.lora_kernels) for capture-dual-stream-lora-tuned
#   bg V [V...]      start a detached runner doing `cycle` for each variant (outlives the call's 10-minute limit)
#   poll [SECONDS]   wait for the runner (at most SECONDS), print its log tail, copy results to $OUT
#   cycle V [V...]   for each variant: cold start, suites, stop, warm restart (what the runner does)
#   sbs V [V...]     start a detached side-by-side run (benchmarks/sidebyside.py): every variant's server up at
#                    once at one utilization, passes in alternating order; a *lora-tuned variant gets its
#                    tiles restored from benchmarks/results/$BENCH_TILES (benchmarks/restore_tiles.py)
#   sbspoll [SECONDS] wait for it, print the pass lines, copy sidebyside.json, the runner log and the server logs
#   i23              start a detached issue-23 run (benchmarks/issue23.py): ready times, side by side, gateway,
#                    adapter scaling, hot adapter; BENCH_I23_ARGS adds options (word-split)
#   i23poll [SECONDS] wait for it (at most SECONDS), print its progress lines, copy issue23-*.json (one .tgz) and logs
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/root/site:/root/repo HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
ROOT=/root/bench
RES=$ROOT/results
OUT=${OUT:-/tmp/out}
# The code a runner uses, copied fresh from this call's tree (it may have changed since install; `training` for
# BENCH_TRAIN), and no done-marker of an earlier runner.
fresh_repo() {
  rm -rf /root/repo; mkdir -p /root/repo $RES; cp -r benchmarks exaone_lora service training Pulumi.*.yaml /root/repo/
  rm -f $ROOT/runner.done
}
# Wait for the detached runner's done-marker, at most $1 seconds (a call may run 10 minutes), and say which ended it.
wait_runner() {
  local limit=$1 t=0
  while [ ! -e $ROOT/runner.done ] && [ $t -lt "$limit" ]; do sleep 5; t=$((t+5)); done
  [ -e $ROOT/runner.done ] && echo "RUNNER DONE" || echo "runner still going after ${limit}s"
}
step=$1; shift
case "$step" in
  stage)
    mkdir -p /root/stage; cp ".gpu/c$1/part$1" /root/stage/; ls -la /root/stage ;;
  install)
    fresh_repo
    cd /root/stage && cat part? > wheels.tar && mkdir -p whl && tar xf wheels.tar -C whl && rm -f part? wheels.tar
    python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site whl/*.whl 2>&1 | tail -3
    cd /root/repo
    python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
    [ -n "${BENCH_NO_HELP:-}" ] || python3 -m vllm.entrypoints.openai.api_server --help=all > "$OUT/vllm-help.txt" 2>&1 || true
    [ -n "${BENCH_NO_HELP:-}" ] || grep -E -- "--(async-scheduling|compilation-config|cudagraph|max-cudagraph|enable-prefix|max-num-batched|specialize|max-cpu-loras|disable-uvicorn|stream-interval|fully-sharded)" "$OUT/vllm-help.txt" | head -30 || true
    mkdir -p $ROOT $RES && python3 -m benchmarks.device prepare --root $ROOT
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv ;;
  tune)
    # Into that variant's cache, where its rendered VLLM_TUNED_CONFIG_FOLDER points (the host layout's cache/lora-kernels).
    cd /root/repo && python3 -m service.cli tune-lora-kernels --model-dir $ROOT/model --report $RES/lora-tune.json \
      --out $ROOT/cache/capture-dual-stream-lora-tuned/lora-kernels --budget-s "${BENCH_TUNE_BUDGET:-300}" 2>&1 | tail -80
    cp $RES/lora-tune.json "$OUT/" 2>/dev/null || true ;;
  bg)
    fresh_repo
    # BENCH_TRAIN="config ..." also runs those training-speed configurations once the serving variants are done.
    setsid nohup bash -c "cd /root/repo && bash benchmarks/device_run.sh cycle $*; \
      ${BENCH_TRAIN:+bash benchmarks/device_run.sh train $BENCH_TRAIN;} touch $ROOT/runner.done" \
      > $ROOT/runner.log 2>&1 < /dev/null &
    sleep 2; echo "runner started for: $*" ;;
  sbs)
    fresh_repo; cd /root/repo
    for v in "$@"; do case "$v" in *lora-tuned)
      python3 -m benchmarks.restore_tiles --report "benchmarks/results/${BENCH_TILES:-lora-tune-h200.json}" \
        --model-dir $ROOT/model --out $ROOT/cache/$v/lora-kernels \
        || echo "TILES NOT RESTORED: $v runs on vLLM's default tiles" ;; esac; done
    variants=$(IFS=,; echo "$*")
    # BENCH_SBS_ARGS: more sidebyside options (--passes, --levels, --rounds, --utilization, ...), word-split.
    setsid nohup bash -c "python3 -m benchmarks.sidebyside run --root $ROOT --out $RES --variants $variants \
      ${BENCH_SBS_ARGS:-}; touch $ROOT/runner.done" > $ROOT/runner.log 2>&1 < /dev/null &
    sleep 2; echo "side-by-side started for: $variants" ;;
  sbspoll)
    wait_runner "${1:-560}"
    grep -E "^pass |started |Error|error|Traceback|wrote " $ROOT/runner.log | tail -40 || true
    tail -5 $ROOT/runner.log
    for f in $RES/sbs-*.log; do [ -e "$f" ] && echo "$(basename "$f"): $(grep -aEo "(Available KV cache memory|GPU KV cache size|init engine|Graph capturing finished)[^\r]{0,80}" "$f" | tr '\n' ' ')"; done
    cp $RES/sidebyside*.json "$OUT/" 2>/dev/null || true
    tail -c 2000000 $ROOT/runner.log > "$OUT/runner.log"
    tar czf "$OUT/server-logs.tgz" -C $RES $(cd $RES && ls sbs-*.log 2>/dev/null) 2>/dev/null || true
    nvidia-smi --query-gpu=name,memory.used,utilization.gpu,clocks.sm --format=csv,noheader; ls -la "$OUT" ;;
  i23)
    fresh_repo; cd /root/repo
    setsid nohup bash -c "python3 -m benchmarks.issue23 run --root $ROOT --out $RES \
      --tiles benchmarks/results/${BENCH_TILES:-lora-tune-h200.json} ${BENCH_I23_ARGS:-}; touch $ROOT/runner.done" \
      > $ROOT/runner.log 2>&1 < /dev/null &
    sleep 2; echo "issue-23 runner started" ;;
  i23poll)
    wait_runner "${1:-560}"
    grep -aE "ready |^pass |pass [0-9]|scaling |SKIP|FAILED|wrote |Error|Traceback|RUNNER" $ROOT/runner.log | tail -50 || true
    tail -3 $ROOT/runner.log
    # One archive: at most 8 files come back per call.
    (cd $RES && ls issue23-*.json >/dev/null 2>&1 && tar czf "$OUT/issue23-json.tgz" issue23-*.json) || true
    tail -c 3000000 $ROOT/runner.log > "$OUT/runner.log"
    (cd $RES && ls i23-*.log >/dev/null 2>&1 && tar czf "$OUT/server-logs.tgz" i23-*.log) || true
    nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader; ls -la "$OUT" ;;
  poll)
    wait_runner "${1:-560}"
    grep -E "SUMMARY|ready after|suite .* done|merged |profiles|Error|error|started |rc=|samples_per_s" $ROOT/runner.log | tail -60 || true
    cp $RES/*.json $RES/*.txt "$OUT/" 2>/dev/null || true
    for f in $RES/*.log; do [ -e "$f" ] && tail -c 400000 "$f" > "$OUT/$(basename "$f")"; done; ls -la "$OUT" ;;
  cycle)
    # BENCH_SUITES (comma list), BENCH_NO_RESTART=1 and BENCH_SATURATION_ROUNDS trim or lengthen a run;
    # BENCH_CLIENT_PROCESSES=8 sends saturation from 8 client processes.
    for v in "$@"; do
      if [ "$v" = hot ] || [ "$v" = dual ]; then
        python3 -m benchmarks.device "$v" --root $ROOT --out $RES \
          ${BENCH_SATURATION_ROUNDS:+--saturation-rounds $BENCH_SATURATION_ROUNDS} || echo "VARIANT $v FAILED"
        continue
      fi
      python3 -m benchmarks.device cycle "$v" --root $ROOT --out $RES $([ -n "${BENCH_NO_RESTART:-}" ] || echo --restart) \
        ${BENCH_SUITES:+--suites $BENCH_SUITES} ${BENCH_SATURATION_ROUNDS:+--saturation-rounds $BENCH_SATURATION_ROUNDS} \
        ${BENCH_READY_TIMEOUT:+--ready-timeout $BENCH_READY_TIMEOUT} ${BENCH_CLIENT_PROCESSES:+--client-processes $BENCH_CLIENT_PROCESSES} \
        || echo "VARIANT $v FAILED"
    done ;;
  train)
    # The training-speed configurations (benchmarks/train_speed_gpu.sh) after the serving runner, same machine.
    cd /root/repo && OUT=$RES ROOT=/root/train bash benchmarks/train_speed_gpu.sh "$@" ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
