#!/usr/bin/env bash
# The GPU training-speed comparison of docs/training-benchmarks.md, in one device call:
#   bash benchmarks/train_speed_gpu.sh            (writes train-<name>.json + train-log.txt under $OUT)
# Same data (seed 42, ~400-token synthetic chat samples), rank 32 on all 7 linear modules, bf16,
# effective batch 32 samples, 3 warm-up + 5 timed optimizer steps per configuration (STEPS=N for N).
set -u
# usage: bash benchmarks/train_speed_gpu.sh [configuration ...]
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/train-speed-out}; R=${ROOT:-/tmp/train-speed}; C=$R/model-full
mkdir -p "$OUT" "$R"
LOG=$OUT/train-log.txt
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
python3 -c "import torch,transformers,peft;print('torch',torch.__version__,'transformers',transformers.__version__,'peft',peft.__version__)" | tee -a "$LOG"
t=$(date +%s); python3 -c "from exaone_lora.checkpoints import make_checkpoint as m; print(m('$C','full',device='cuda').path)" >>"$LOG" 2>&1
echo "checkpoint rc=$? in $(( $(date +%s) - t )) s" | tee -a "$LOG"
run() {
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee -a "$LOG"
  timeout "$limit" python3 -m benchmarks.train_speed --checkpoint "$C" --root "$R" --steps "${STEPS:-5}" --warmup-steps 3 \
    --sample-tokens 290 "$@" >"$OUT/train-$name.json" 2>>"$LOG"
  echo "$name rc=$?" | tee -a "$LOG"
  python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print({k:d[k] for k in ('samples_per_step','samples_per_s','tokens_per_s','mfu','peak_memory_gib','loss_first','loss_last','mean_sample_tokens','setup_seconds')})" \
    "$OUT/train-$name.json" 2>&1 | tee -a "$LOG"
}
FLAT="--micro-batch 32 --grad-accum 1 --chunked-ce --max-length 512 --compile --padding-free --pad-multiple 64 --profile"
config() {
  case $1 in
    reference) run reference 120 --micro-batch 4 --grad-accum 8 --max-length 512 ;;
    mb16-chunked) run mb16-chunked 90 --micro-batch 16 --grad-accum 2 --chunked-ce --max-length 512 ;;
    mb32-chunked) run mb32-chunked 90 --micro-batch 32 --grad-accum 1 --chunked-ce --max-length 512 ;;
    packed-chunked) run packed-chunked 90 --micro-batch 8 --grad-accum 1 --chunked-ce --packing --max-length 1800 ;;
    mb32-chunked-compile) run mb32-chunked-compile 200 --micro-batch 32 --grad-accum 1 --chunked-ce --max-length 512 --compile --pad-multiple 64 ;;
    mb16-chunked-compile) run mb16-chunked-compile 150 --micro-batch 16 --grad-accum 2 --chunked-ce --max-length 512 --compile --pad-multiple 64 ;;
    packed-chunked-compile) run packed-chunked-compile 150 --micro-batch 8 --grad-accum 1 --chunked-ce --packing --max-length 1800 --compile --pad-multiple 64 ;;
    # Round 3 (mask-free right padding -> FlashAttention path), with one profiled step each:
    mb32-flash) run mb32-flash 90 --micro-batch 32 --grad-accum 1 --chunked-ce --max-length 512 --profile ;;
    mb32-flash-compile) run mb32-flash-compile 240 --micro-batch 32 --grad-accum 1 --chunked-ce --max-length 512 --compile --pad-multiple 64 --profile ;;
    mb16-flash-compile) run mb16-flash-compile 240 --micro-batch 16 --grad-accum 2 --chunked-ce --max-length 512 --compile --pad-multiple 64 ;;
    # Round 4 (padding-free rows: the micro-batch's samples end to end, FlashAttention's variable-length kernel):
    varlen-check) echo "== varlen-check" | tee -a "$LOG"; timeout 120 python3 -m benchmarks.varlen_check >"$OUT/varlen-check.json" 2>>"$LOG"
                  echo "varlen-check rc=$?" | tee -a "$LOG" ;;
    mb32-flat) run mb32-flat 90 --micro-batch 32 --grad-accum 1 --chunked-ce --max-length 512 --padding-free --pad-multiple 64 ;;
    mb32-flat-compile) run mb32-flat-compile 400 $FLAT ;;
    # Round 5 (H200): inductor settings (C++ wrapper, tuned launch parameters, autotuned pointwise kernels),
    # larger loss chunks, and (diagnostic only, not the reference's hyperparameters) what LoRA dropout costs.
    flat-cpp) run flat-cpp 250 $FLAT --inductor cpp_wrapper=true ;;
    flat-cdt) run flat-cdt 200 $FLAT --inductor coordinate_descent_tuning=true ;;
    flat-nodrop) run flat-nodrop 120 $FLAT --lora-dropout 0 ;;
    flat-ce4k) run flat-ce4k 150 $FLAT --ce-chunk-tokens 4096 ;;
    flat-mapw) run flat-mapw 150 $FLAT --inductor max_autotune_pointwise=true ;;
    *) echo "unknown configuration $1" | tee -a "$LOG" ;;
  esac
}
# First call: reference mb16-chunked mb32-chunked packed-chunked mb32-chunked-compile (the default);
# second call (with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True): mb32-chunked packed-chunked-compile mb16-chunked-compile
# third call (after the mask-free attention change): reference mb32-flash mb32-flash-compile mb16-flash-compile
# fourth call (padding-free rows; RoPE fixed): varlen-check mb32-flat-compile mb32-flash-compile reference
for c in "${@:-reference mb16-chunked mb32-chunked packed-chunked mb32-chunked-compile}"; do for n in $c; do config "$n"; done; done
