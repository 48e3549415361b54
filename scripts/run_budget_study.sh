#!/usr/bin/env bash
# The compute-budget study on the embedded SFT task: every strategy and denoise at budgets 0.25
# and 0.5 of a 9-epoch full run, at 0 %, 20 % and 40 % wrong answers, against full (9 epochs)
# and the clean-only oracle. Resumable (finished points are skipped); then
#   qtune-report OUT/noise20 --out OUT/report_noise20   (and so on per noise level)
#   scripts/run_budget_study.sh [OUT] [WORKERS] [SEEDS]      (defaults: outputs/budget_study, 2, 5)
set -euo pipefail
OUT=${1:-outputs/budget_study}
WORKERS=${2:-2}
SEEDS=${3:-5}
STRATEGIES=(full random el2n rs2 seta qtuning ccs infobatch denoise)
# budget 0.5 at every noise level first (the headline), then 0.25
for BUDGET in 0.5 0.25; do
  for NOISE in 0.0 0.2 0.4; do
    TAG=noise$(python -c "print(round($NOISE * 100))")
    GRID=(python "$(dirname "$0")/run_grid.py" --task sft --epochs 9 --seeds "$SEEDS"
          --workers "$WORKERS" --out "$OUT/$TAG")
    # each strategy at ratio 0.5 (the grid's default) under the budget; run_grid adds full at 9 epochs
    "${GRID[@]}" --strategies "${STRATEGIES[@]}" --budgets "$BUDGET" --set "data.noise_fraction=$NOISE"
    if [ "$NOISE" != "0.0" ]; then  # the oracle: every wrong answer left out, the full 9 epochs
      "${GRID[@]}" --strategies full --tag clean_only \
        --set "data.noise_fraction=$NOISE" "data.drop_kinds=[noisy]"
    fi
  done
done
