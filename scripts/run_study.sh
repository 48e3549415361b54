#!/usr/bin/env bash
# The study behind docs/RESULTS.md: every grid, unattended, resumable (run it again to finish an
# interrupted study: finished points are skipped). Then: qtune-report outputs/study --out docs/results
#   scripts/run_study.sh [OUT] [WORKERS]      (defaults: outputs/study, 2)
set -euo pipefail
OUT=${1:-outputs/study}
WORKERS=${2:-2}
GRID=(python "$(dirname "$0")/run_grid.py" --out "$OUT" --workers "$WORKERS")
SFT_SEEDS=5
DIGITS_SEEDS=10
ALL_PRUNE=(strategy.policy.q1=prune strategy.policy.q2=prune strategy.policy.q3=prune strategy.policy.q4=prune)

# Embedded SFT: 3 epochs (the earlier default) and 3x that, where full-data SFT has time to fit the noise.
for EPOCHS in 3 9; do
  sft=(--task sft --seeds "$SFT_SEEDS" --epochs "$EPOCHS")
  "${GRID[@]}" "${sft[@]}" --strategies full random infobatch seta --ratios 0.5
  "${GRID[@]}" "${sft[@]}" --strategies full --tag clean_only --set data.drop_kinds=[noisy]
  # Q-Tuning at the paper's two settings, and its sample stage alone (tokens untouched)
  "${GRID[@]}" "${sft[@]}" --strategies qtuning --ratios 0.25x0.5 0.5x0.7 0.25x1.0
  # its token stage alone: every sample kept, every sample token-pruned
  "${GRID[@]}" "${sft[@]}" --strategies qtuning --ratios 1.0x0.5 --tag token_only --set "${ALL_PRUNE[@]}"
  # quadrant policies: drop Q2 (confidently wrong); train only the low-perplexity half (Q3 + Q4)
  "${GRID[@]}" "${sft[@]}" --strategies qtuning --ratios 0.25x0.5 0.5x0.7 --tag drop_q2 \
    --set strategy.policy.q2=drop
  "${GRID[@]}" "${sft[@]}" --strategies qtuning --ratios 0.5 --tag low_ppl \
    --set strategy.policy.q2=drop strategy.policy.q3=keep
done

# Digits: 30/50/70/90 % pruned, both budgets, 10 seeds.
digits=(--task digits --seeds "$DIGITS_SEEDS" --ratios 0.1 0.3 0.5 0.7 --budgets same_epochs same_steps)
"${GRID[@]}" "${digits[@]}" --strategies full random el2n ccs seta infobatch rs2
# the static random subset RS2 is compared with
"${GRID[@]}" "${digits[@]}" --strategies random --tag static --set strategy.static=true
# CCS's hard-cutoff beta, chosen by a small sweep at 90 % pruning (the grid above uses 0.1)
for BETA in 0.0 0.2 0.3 0.5; do
  "${GRID[@]}" --task digits --seeds "$DIGITS_SEEDS" --ratios 0.1 --budgets same_epochs \
    --strategies ccs --tag "beta$BETA" --set "strategy.beta=$BETA"
done
