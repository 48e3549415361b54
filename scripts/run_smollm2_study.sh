#!/usr/bin/env bash
# The SmolLM2-135M-Instruct + LoRA study of docs/RESULTS.md (experiment=smollm2_lora, the noisy
# embedded task in chat form): full, random 0.25, Q-Tuning 0.25 x 0.5 and 0.5 x 0.7 (paper
# policy) and 0.25 x 0.5 dropping Q2, 3 seeds each, one run at a time (2 CPU cores: ~1 h).
# Resumable: a point with a summary.json is skipped. Then:
#   qtune-report outputs/smollm2_study --out docs/results/smollm2
#   python scripts/plane_kinds.py outputs/smollm2_study/qtuning_0.25x0.5/seed0
#   scripts/run_smollm2_study.sh [OUT] [SEEDS]      (defaults: outputs/smollm2_study, 3)
set -euo pipefail
OUT=${1:-outputs/smollm2_study}
SEEDS=${2:-3}
mkdir -p "$OUT"
declare -A POINTS=(
  [full]="strategy=full"
  [random_0.25]="strategy=random strategy.keep_ratio=0.25"
  [qtuning_0.25x0.5]="strategy=qtuning strategy.sample_ratio=0.25 strategy.token_ratio=0.5"
  [qtuning_0.5x0.7]="strategy=qtuning strategy.sample_ratio=0.5 strategy.token_ratio=0.7"
  [qtuning_drop_q2_0.25x0.5]="strategy=qtuning strategy.sample_ratio=0.25 strategy.token_ratio=0.5 strategy.policy.q2=drop"
)
for seed in $(seq 0 $((SEEDS - 1))); do
  for name in full random_0.25 qtuning_0.25x0.5 qtuning_0.5x0.7 qtuning_drop_q2_0.25x0.5; do
    dir="$OUT/$name/seed$seed"
    [[ -f "$dir/summary.json" ]] && continue
    rm -rf "$dir"
    # shellcheck disable=SC2086
    qtune-train experiment=smollm2_lora ${POINTS[$name]} seed="$seed" \
      trainer.enable_progress_bar=false hydra.run.dir="$dir" > "$OUT/$name.seed$seed.log" 2>&1 \
      || echo "failed: $dir (log: $OUT/$name.seed$seed.log)"
  done
done
