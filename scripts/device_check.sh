#!/usr/bin/env bash
# Every GPU check in one go, for a machine with one CUDA GPU and nothing to download from:
#   1. the kernel tests for real (Triton parity, large shapes, bf16),
#   2. the kernel benchmark: bf16 32768x49152 (issue targets; the liger row when liger-kernel is
#      importable) and fp32 4096x32000,
#   3. the default job under Lightning's DDP strategy on the GPU (bf16-mixed), Q-Tuning 0.25 x 0.5,
#      then full, then one epoch of Q-Tuning under FSDP (Lightning refuses FSDP on CPU, so this
#      is where trainer=fsdp runs), each with summary.json kept,
#   4. PruningMixin inside transformers.Trainer under torchrun on every GPU (FSDP2 when there are
#      two or more: accelerate enables FSDP only for GPU process groups), Q-Tuning 0.25 x 0.5,
#      each rank's record (plans, history, store and weight digests) kept.
# Each step has its own time limit (under 10 minutes in all; most steps need far less), so one
# slow step cannot take the others' results with it; the benchmarks write their JSON row by row.
# Results go to $OUT (default: ./gpu_check): check.log, the two benchmark JSONs and the three
# summaries (six files at most). Packages the machine lacks (hydra-core, omegaconf,
# antlr4-python3-runtime, liger-kernel) can travel as wheels in ./.whl. Run from the repo root:
#   bash scripts/device_check.sh
set -uo pipefail
REPO=$(pwd)
OUT=${OUT:-$REPO/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline QTUNE_CACHE=/tmp/qtune_cache
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/qt . || exit 1
export PYTHONPATH=/tmp/qt:/tmp/site:${PYTHONPATH:-}
cd /tmp  # import the installed package, not the checkout's source folders
LOG="$OUT/check.log"
step() { echo "== $1 ($(date +%T))" | tee -a "$LOG"; }
step "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee -a "$LOG"
step "kernel tests"
timeout 90 python3 -m pytest -q -p no:cacheprovider --rootdir "$REPO" "$REPO/tests/unit/test_kernels_triton.py" \
  "$REPO/tests/unit/test_kernels.py" "$REPO/tests/unit/test_kernels_linear.py" \
  "$REPO/tests/unit/test_kernels_edges.py" 2>&1 | tail -15 | tee -a "$LOG"
step "benchmark bf16"
timeout 150 python3 "$REPO/scripts/bench_kernels.py" --dtype bf16 --shapes 32768x49152 \
  --json "$OUT/gpu_bf16.json" 2>&1 | tee -a "$LOG"
step "benchmark fp32"
timeout 45 python3 "$REPO/scripts/bench_kernels.py" --dtype fp32 --shapes 4096x32000 --repeats 10 \
  --json "$OUT/gpu_fp32.json" 2>&1 | tee -a "$LOG"
train() {  # name, time limit, overrides...
  local name=$1 limit=$2
  shift 2
  step "run: $name"
  timeout "$limit" python3 -m qtune.train trainer.enable_progress_bar=false \
    hydra.run.dir=/tmp/run_$name "$@" 2>&1 | tail -20 | tee -a "$LOG"
  cp /tmp/run_$name/summary.json "$OUT/${name}_summary.json" 2>/dev/null
}
# the first run also builds the cached base model
train ddp_qtuning 150 trainer=ddp trainer.devices=1 strategy=qtuning
train ddp_full 90 trainer=ddp trainer.devices=1 strategy=full
train fsdp_qtuning 60 trainer=fsdp trainer.devices=1 strategy=qtuning epochs=1
step "hf mixin under torchrun"
NGPU=$(nvidia-smi -L | wc -l)
FSDP=""
[ "$NGPU" -ge 2 ] && FSDP="--fsdp"
python3 -c "import sys; sys.path.insert(0, '$REPO/tests'); from pathlib import Path; \
from tiny_hf import save_tiny_llama; save_tiny_llama(Path('/tmp/hf_llama'))" 2>&1 | tail -3 | tee -a "$LOG"
timeout 120 python3 -m torch.distributed.run --nproc-per-node "$NGPU" "$REPO/tests/distributed/hf_job.py" \
  --gpu $FSDP --model /tmp/hf_llama --out /tmp/hf_gpu --pruning qtuning \
  --options '{"sample_ratio": 0.25, "token_ratio": 0.5}' 2>&1 | tail -8 | tee -a "$LOG"
cp /tmp/hf_gpu/rank*.json "$OUT/" 2>/dev/null
step done
