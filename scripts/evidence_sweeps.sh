#!/usr/bin/env bash
# The class-scale sweeps behind chapters 3-4 (issue 12), in the order the chapters need them.
# Resumable: a rerun skips complete, current records. Both cores: two worker processes.
#   bash scripts/evidence_sweeps.sh            # about 3 h on a quiet 2-core CPU (about 200 runs of 1 min)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
W=${WORKERS:-2}
run() { echo "== $(date +%T) $*"; python -m droplab.sweep run "$@" --scale class --workers "$W"; }
run residual --seeds 5 --only none,P0,P1,P2,P3,P4,P5,P6,P7
run head --seeds 5
run residual-p --seeds 2
run head-p --seeds 2
run residual --seeds 3 --only bottleneck-none,bottleneck-P6,resnetv1-none,resnetv1-P6
# each tuned position at its best p (chosen on validation) with as many seeds as the main table
for exp in residual-p head-p; do
  best=$(python - "$exp" <<'PY'
import sys
from droplab import sweep
exp = sys.argv[1]
p = sweep.tuned_p(sweep.check_records(exp, "class", 2))
print(",".join(f"{pos}-p{q:g}" for pos, q in sorted(p.items())))
PY
)
  run "$exp" --seeds 5 --only "none,$best"
done
echo "== $(date +%T) done"
