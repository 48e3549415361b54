#!/usr/bin/env bash
# The token-rule study of docs/RESULTS.md (issue 34): full; each token rule alone at its paper's
# default (random 0.5, ppl 0.5 with λ 0.5, rho1 0.6 per batch, tokencleaning 0.6 global, dft,
# eaft K 20, asft KL weight 0.1); random 0.25 alone and × each rule (selecting rules at 0.5 of
# the tokens, the Q-Tuning paper's 25 % × 50 % protocol; ppl also at λ 0); Q-Tuning 0.25 × 0.5.
# Unattended and resumable (run it again: finished points, references and loss files are kept).
#
#   scripts/run_token_study.sh [OUT] [WORKERS] [embedded|smollm2]
#     embedded (default): the noisy embedded task, tiny Llama, 5 seeds, 9 epochs, OUT outputs/token_study
#     smollm2: experiment=smollm2_lora (SmolLM2-135M + LoRA), 3 seeds, 2 epochs, OUT outputs/smollm2_token_study
#   environment: SEEDS, EPOCHS, REF_EPOCHS (the reference's; default EPOCHS) override the above;
#   ONLY="full rho1 random_x_tokencleaning ..." runs only those points (full, random, qtuning,
#   RULE alone, random_x_RULE, random_x_ppl_lam0; RULE in random ppl rho1 tokencleaning dft eaft
#   asft) and the references they need; DRY=1 prints the plan and runs nothing.
#   Then: python scripts/token_study_table.py OUT > table.md ; qtune-report OUT/sft --out OUT/report
#
# The reference (rho1, tokencleaning) is trained by qtune first, per seed (each seed has its own
# data): random 10 % of the clean items (data.drop_kinds=[noisy]), the same subset every epoch;
# OUT/reference/sft/random-clean_ref-keep0.1-*/seed<N>. rho1 forwards it every step
# (reference.source=path); tokencleaning global reads its and the starting model's per-token
# losses from a file computed once per seed by qtune-score (OUT/losses/seed<N>,
# reference.source=file). asft compares with the starting model (reference.source=self). With
# smollm2 rho1 also uses reference.source=self (LoRA: the adapters disabled, no second copy);
# tokencleaning needs a trained reference there too (base - reference is 0 for self). What each
# reference cost is in the runs' summary.json (reference.training_flops, file_flops) and in the
# table. Points: 18 per seed (+ the reference and its loss file).
#
# Time. Embedded, measured with 1 seed x 9 epochs, one thread per run, on the 2-core CPU shared
# with other jobs (load average 4.5 during the first two, under 1 during the last), wall seconds
# incl. start-up and evaluation: reference 49 (+ 20 grid start), qtune-score loss file 95, full
# 300, full x rho1 321, random 0.25 x tokencleaning-global 48. Extrapolated per seed (the other
# rules alone 1.0-1.1x full, asft like rho1, random 0.25 ~ 95, Q-Tuning ~ 215, composed ~ 100
# each): about 3,650 s of runs per seed. With 2 workers each grid of 5 seeds takes 3 rounds:
# 3 x 3,650 + 5 x 95 (loss files) + 19 grid starts x 20 s = about 11,800 s, 3 h 15 min as
# measured (the last run, on a quiet CPU, went twice as fast: perhaps 2 h on an idle one).
# SmolLM2 (not timed here; a full run of the SmolLM2 study is about 2.5 min): about 12
# full-run equivalents per seed, about 1 h 30 min for 3 seeds with 1 worker.
set -euo pipefail
OUT=${1:-}
WORKERS=${2:-2}
KIND=${3:-embedded}
case "$KIND" in
  embedded) OUT=${OUT:-outputs/token_study}; SEEDS=${SEEDS:-5}; EPOCHS=${EPOCHS:-9}; BASE=() ;;
  smollm2) OUT=${OUT:-outputs/smollm2_token_study}; SEEDS=${SEEDS:-3}; EPOCHS=${EPOCHS:-2}
    BASE=(experiment=smollm2_lora) ;;
  *) echo "unknown study $KIND (embedded | smollm2)" >&2; exit 2 ;;
esac
HERE=$(cd "$(dirname "$0")" && pwd)
GRID=(python "$HERE/run_grid.py" --task sft --epochs "$EPOCHS" --seeds "$SEEDS" --workers "$WORKERS")
[[ -n "${DRY:-}" ]] && GRID+=(--dry-run)
REF_EPOCHS=${REF_EPOCHS:-$EPOCHS}
REF_NAME="random-clean_ref-keep0.1-same_epochs-e$REF_EPOCHS"
REF="$OUT/reference/sft/$REF_NAME"
LOSSES="$OUT/losses"
# per-seed paths: Hydra resolves ${seed} in each run's config
REF_PATH=(reference.source=path "reference.path=$REF/seed\${seed}")
FILE=(reference.source=file "reference.path=$LOSSES/seed\${seed}")
SELF=(reference.source=self)
if [[ "$KIND" == smollm2 ]]; then RHO1_REF=("${SELF[@]}"); else RHO1_REF=("${REF_PATH[@]}"); fi

want() { [[ -z "${ONLY:-}" || " $ONLY " == *" $1 "* ]]; }
needs_reference() {
  for r in rho1 tokencleaning; do
    if [[ $r == rho1 && "$KIND" == smollm2 ]]; then continue; fi
    want "$r" || want "random_x_$r" && return 0
  done
  return 1
}

# the rules: name -> overrides (alone: the paper's default ratio)
declare -A RULE=(
  [random]="+strategy/token=random"
  [ppl]="+strategy/token=ppl"
  [rho1]="+strategy/token=rho1 ${RHO1_REF[*]}"
  [tokencleaning]="+strategy/token=tokencleaning ${FILE[*]}"
  [dft]="+strategy/token=dft"
  [eaft]="+strategy/token=eaft"
  [asft]="+strategy/token=asft ${SELF[*]}"
)
RULES=(random ppl rho1 tokencleaning dft eaft asft)
SELECTING=(random ppl rho1 tokencleaning)

# 1. the clean 10 % reference of each seed, then the loss files tokencleaning reads
if needs_reference; then
  "${GRID[@]}" --out "$OUT/reference" --epochs "$REF_EPOCHS" --strategies random --ratios 0.1 --tag clean_ref \
    --set "${BASE[@]}" strategy.static=true "data.drop_kinds=[noisy]"
  if want tokencleaning || want random_x_tokencleaning; then
    for seed in $(seq 0 $((SEEDS - 1))); do
      dir="$LOSSES/seed$seed"
      [[ -f "$dir/meta.json" ]] && continue
      echo "qtune-score token_losses.out=$dir (reference $REF/seed$seed)"
      [[ -n "${DRY:-}" ]] && continue
      mkdir -p "$LOSSES"
      qtune-score "${BASE[@]}" seed="$seed" token_losses.out="$dir" token_losses.base=true \
        reference.source=path reference.path="$REF/seed$seed" \
        hydra.run.dir="$LOSSES/.hydra_seed$seed" > "$LOSSES/seed$seed.log" 2>&1 \
        || { echo "failed: $dir (log: $LOSSES/seed$seed.log)"; exit 1; }
    done
  fi
fi

# 2. the study's points, under OUT/sft/<point>/seed<N>
grid() {
  # a dry run goes on past points refused for a reference or loss file not made yet
  "${GRID[@]}" --out "$OUT" "$@" || { [[ -n "${DRY:-}" ]] && echo "(dry run: refused above; goes on)"; }
}
want full && grid --strategies full --set "${BASE[@]}"
want random && grid --strategies random --ratios 0.25 --set "${BASE[@]}"
want qtuning && grid --strategies qtuning --ratios 0.25x0.5 --set "${BASE[@]}"
for r in "${RULES[@]}"; do
  # shellcheck disable=SC2086
  want "$r" && grid --strategies full --tag "$r" --set "${BASE[@]}" ${RULE[$r]}
done
for r in "${RULES[@]}"; do
  half=()
  [[ " ${SELECTING[*]} " == *" $r "* ]] && half=(strategy.token.keep_ratio=0.5)
  # shellcheck disable=SC2086
  want "random_x_$r" && grid --strategies random --ratios 0.25 --tag "$r" --set "${BASE[@]}" ${RULE[$r]} "${half[@]}"
done
# Q-Tuning's Table 5 pair: its PPL token score without the neighbour term (λ = 0)
want random_x_ppl_lam0 && grid --strategies random --ratios 0.25 --tag ppl_lam0 \
  --set "${BASE[@]}" +strategy/token=ppl strategy.token.keep_ratio=0.5 strategy.token.lam=0.0
exit 0
