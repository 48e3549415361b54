#!/usr/bin/env bash
# The SmolLM2 LoRA confirmation of the compute-budget study (docs/RESULTS.md): on
# experiment=smollm2_lora (20 % wrong answers, chat form) at 5 epochs, full against full and
# denoise at budget=0.5, 3 seeds each, one run at a time (2 CPU cores: about 30 min). 5 epochs,
# not the experiment's 2, so that half of full's FLOPs pays denoise's two warm-up epochs and
# leaves one pruned epoch. Resumable: a point with a summary.json is skipped. Then:
#   python scripts/budget_table.py OUT        (OUT/sft/<point>/seed<S>, as the embedded grid)
#   scripts/run_smollm2_budget.sh [OUT] [SEEDS]      (defaults: outputs/smollm2_budget, 3)
set -euo pipefail
OUT=${1:-outputs/smollm2_budget}
SEEDS=${2:-3}
EPOCHS=5
declare -A POINTS=(
  [full-same_epochs-e5]="strategy=full"
  [full-budget0.5-e5]="strategy=full budget=0.5"
  [denoise-keep0.5-budget0.5-e5]="strategy=denoise strategy.keep_ratio=0.5 budget=0.5"
)
mkdir -p "$OUT/sft"
for seed in $(seq 0 $((SEEDS - 1))); do
  for name in full-same_epochs-e5 full-budget0.5-e5 denoise-keep0.5-budget0.5-e5; do
    dir="$OUT/sft/$name/seed$seed"
    [[ -f "$dir/summary.json" ]] && continue
    rm -rf "$dir"
    # shellcheck disable=SC2086
    qtune-train experiment=smollm2_lora epochs=$EPOCHS ${POINTS[$name]} seed="$seed" \
      trainer.enable_progress_bar=false hydra.run.dir="$dir" > "$OUT/$name.seed$seed.log" 2>&1 \
      || echo "failed: $dir (log: $OUT/$name.seed$seed.log)"
  done
done
