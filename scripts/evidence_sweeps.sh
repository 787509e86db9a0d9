#!/usr/bin/env bash
# The class-scale sweeps behind chapters 3-4 and 6, in the order the chapters need them.
# Resumable: a rerun skips complete, current records. Both cores: two worker processes.
# Every run in fp32 (--precision), as the first records were made on a CPU without native
# bf16: a comparison never mixes precisions. The `precision` experiment measures bf16 itself.
#   bash scripts/evidence_sweeps.sh   # about 570 runs of 20-160 s on one core (the CPU decides)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
W=${WORKERS:-2}
run() { echo "== $(date +%T) $*"; python -m droplab.sweep run "$@" --scale class --workers "$W" --precision fp32; }
run residual --seeds 5 --only none,P0,P1,P2,P3,P4,P5,P6,P7
run head --seeds 5
run residual-p --seeds 2
run head-p --seeds 2
run residual --seeds 3 --only bottleneck-none,bottleneck-P6,resnetv1-none,resnetv1-P6
# each tuned position at its best p (chosen on validation) with as many seeds as the main table
for exp in residual-p head-p; do
  best=$(python - "$exp" <<'PY'
import sys
from droplab import compare, records
exp = sys.argv[1]
p = compare.tuned_p(records.check_records(exp, "class", 2))
print(",".join(f"{pos}-p{q:g}" for pos, q in sorted(p.items())))
PY
)
  run "$exp" --seeds 5 --only "none,$best"
done
# chapter 6: P6, P7 and DropPath at a common p = 0.1 with five seeds (their best p is in the loop above)
run residual-p --seeds 5 --only P6-p0.1,P7-p0.1,P7path-p0.1
# chapter 6: early dropout (both regimes), the ViT's T0-T4, P4/P6 with BN and with GroupNorm
run early --seeds 5
run early --seeds 10 --only underfit-none,underfit-P6,underfit-P6-early5,underfit-P6-early10,underfit-P6-early15
run vit --seeds 5
run norm --seeds 5
run norm --seeds 10 --only none,P4,P6,group-e50-none,group-e50-P4,group-e50-P6
# H4 and H5 at noise-matched rates (experiments.NOISE_MATCHED; chapter 4)
run head-p --seeds 5 --only H4-matched,H5-matched
# bf16 + channels_last against fp32, paired by seed (bf16 is emulated, and slow, on a
# CPU without native bf16); this experiment's configs set their precision themselves
python -m droplab.sweep run precision --scale class --workers "$W" --seeds 5
# The second regime (chapters 3-4): the positive control on validation, the rates chosen on
# validation by seeds 100+, then the placement study (its rates are in experiments.PLACEMENT_P,
# which chapter 3 checks against the placement-p records).
run control --seeds 5
run placement-p --seeds 2
run placement --seeds 10
echo "== $(date +%T) done"
