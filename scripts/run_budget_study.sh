#!/usr/bin/env bash
# The compute-budget study on the embedded SFT task: every strategy and denoise at budgets 0.25
# and 0.5 of a 9-epoch full run, at 0 %, 20 % and 40 % wrong answers, against full (9 epochs)
# and the clean-only oracle. Resumable (finished points are skipped); then
#   python scripts/budget_table.py OUT/noise20          (docs/RESULTS.md's table; per noise level)
#   qtune-report OUT/noise20 --out OUT/report_noise20   (the full report)
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
    # a failed point (run_grid exits 1) does not stop the rest; rerun the script to retry it
    "${GRID[@]}" --strategies "${STRATEGIES[@]}" --budgets "$BUDGET" --set "data.noise_fraction=$NOISE" || true
    if [ "$NOISE" != "0.0" ]; then  # the oracle: every wrong answer left out, the full 9 epochs
      "${GRID[@]}" --strategies full --tag clean_only \
        --set "data.noise_fraction=$NOISE" "data.drop_kinds=[noisy]" || true
    fi
  done
done
