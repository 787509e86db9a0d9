#!/usr/bin/env bash
# The GPU check: one command, on any machine with a CUDA GPU, that tests droplab's CUDA path,
# benchmarks it and runs the paper-scale sweeps behind chapters 3 and 4, inside a fixed
# wall-clock budget. It installs nothing and downloads nothing, so the machine needs no network.
#
#   bash scripts/gpu_check.sh --pack      # where Fashion-MNIST is: a copy into .gpu_data/ (git-ignored),
#                                         # for a GPU machine that has neither the data nor a network
#   bash scripts/gpu_check.sh             # on the GPU machine, in the repository's folder
#   bash scripts/gpu_check.sh --dry-run   # anywhere: the same steps on the CPU at smoke scale
#                                         # (also when DROPLAB_SCALE=smoke), in a minute or so
#
# Steps, each stamped with the seconds since the start and each under its own `timeout`:
#   1. environment: the machine's python with its own torch (nothing is installed:
#      droplab is imported from lib/ through PYTHONPATH, which the sweep's worker processes
#      inherit); stops with a clear message if torch, CUDA or the data set is missing;
#   2. nvidia-smi, and `nvidia-smi dmon` in the background while the sweeps run;
#   3. pytest -m gpu tests/test_gpu.py (bf16 autocast, channels_last, fused SGD, determinism,
#      torch.compile, divergence, BN recalibration on the device);
#   4. python -m droplab.bench (fast path vs a plain PyTorch loop, TFLOP/s, one full epoch);
#   5. the paper-scale sweeps: first the positive control (`control`: does augmentation or P6
#      beat no regularizer, on validation?) and the placement study (`placement`: none, P0, P2,
#      P4, P6, H4 and H5 in the noisy-label regime, its primary contrasts declared),
#      then, if time is left, `residual` (none, P0-P7) and `head` (none, H1-H7, P6+H4);
#      3 seeds, several worker processes sharing the GPU. They run one
#      seed per phase (workers >= configs: every run of a phase starts at once) and a phase
#      starts only if the longest run so far, with margin, still fits before the deadline;
#      `--time-limit` stops new runs inside a phase and an outer `timeout` is the hard stop.
#      Records are written atomically, so whatever is cut off leaves no partial record.
#   Always, even after a failure (trap on EXIT): the records, the bench JSON, the pytest log,
#   nvidia-smi's output, the log and a step table are packed into $OUT, six files:
#     gpu_check.log  steps.tsv  nvidia-smi.txt  pytest.log  bench.json  records.tar.gz
#   records.tar.gz holds <experiment>/<scale>/<dataset>/<config>-seed<k>.json relative to the
#   results folder: `tar -xzf records.tar.gz -C lib/droplab/results` puts them where chapters read them.
#
# Settings (environment):
#   OUT                 where the six files go (default _build/gpu_check)
#   GPU_CHECK_BUDGET    seconds for the whole script (default 470 on the GPU, 300 in a dry run)
#   GPU_CHECK_WORKERS   sweep worker processes (default 9 on the GPU: one per config of a seed; 1 dry)
#   GPU_CHECK_SEEDS     seeds per sweep (default 3 on the GPU, 1 dry)
#   GPU_CHECK_FIRST_RUN_S  the guess of one run's wall time before any was measured (default 150; 15 dry)
#   GPU_CHECK_MPS=1     start CUDA MPS for the sweeps (kernels of the workers then overlap), after a
#                       probe; falls back to plain time-slicing if it does not work. Off by default.
#   GPU_CHECK_PYTHON    the interpreter (default: .venv/bin/python if there is one, else python3)
#   GPU_CHECK_WORK      scratch folder, results included (default _build/gpu_check_work; emptied first)
#   DROPLAB_DATA        where Fashion-MNIST is (default .gpu_data if it exists)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start ))s $(date -u +%H:%M:%S)] $*"; }
die() { echo "gpu_check: error: $*" >&2; exit 2; }

MODE=gpu
case "${1:-}" in
  --pack) MODE=pack ;;
  --dry-run) MODE=dry ;;
  "") [ "${DROPLAB_SCALE:-}" = smoke ] && MODE=dry ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (valid: --pack, --dry-run, --help)" ;;
esac

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then PY=$GPU_CHECK_PYTHON
elif [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$ROOT/lib${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# ---------------------------------------------------------------------------------------------
# --pack: where the data set is, before copying the folder to the GPU machine
# ---------------------------------------------------------------------------------------------
if [ "$MODE" = pack ]; then
  src=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
  ls "$src"/*-ubyte.gz >/dev/null 2>&1 || die "no Fashion-MNIST *-ubyte.gz in $src (apt-get install dataset-fashion-mnist, or set FASHION_MNIST_DIR)"
  mkdir -p .gpu_data/fashion-mnist
  cp -p "$src"/*-ubyte.gz .gpu_data/fashion-mnist/
  { echo "packed $(date -u +%Y-%m-%dT%H:%M:%SZ) from $src"
    echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' +uncommitted changes')"
  } > .gpu_data/SOURCE
  DROPLAB_DATA=$ROOT/.gpu_data "$PY" -c "
from droplab import data
for s in ('train', 'test'):
    print('fashion-mnist', s, tuple(data.load('fashion-mnist', s).images.shape), 'sha256 ok')"
  git check-ignore -q .gpu_data/fashion-mnist/train-images-idx3-ubyte.gz \
    || die ".gpu_data/ is not git-ignored: add /.gpu_data/ to .gitignore (a data set is never committed)"
  tree=$( (git ls-files -z -co --exclude-standard; find .gpu_data -type f -print0) | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  echo "the repository's files and .gpu_data/: $(( tree / 1048576 )) MiB to copy to the GPU machine, e.g."
  echo "  rsync -a --exclude .venv --exclude _build --exclude .git ./ HOST:dropout-where/"
  echo "then there, in that folder: bash scripts/gpu_check.sh"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# The run: settings per mode
# ---------------------------------------------------------------------------------------------
if [ "$MODE" = dry ]; then
  SCALE=smoke; DATASET=synthetic; DEVICE=cpu
  BUDGET=${GPU_CHECK_BUDGET:-300}; WORKERS=${GPU_CHECK_WORKERS:-1}; SEEDS=${GPU_CHECK_SEEDS:-1}
  FIRST_RUN_S=${GPU_CHECK_FIRST_RUN_S:-15}
  BENCH=(--device cpu --model preresnet8 --input 28 --images 256 --batch-size 64)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  CAP_ENV=60; CAP_TESTS=120; CAP_BENCH=120; PACK_RESERVE=10
else
  SCALE=paper; DATASET=fashion-mnist; DEVICE=cuda
  BUDGET=${GPU_CHECK_BUDGET:-470}; WORKERS=${GPU_CHECK_WORKERS:-9}; SEEDS=${GPU_CHECK_SEEDS:-3}
  FIRST_RUN_S=${GPU_CHECK_FIRST_RUN_S:-150}
  BENCH=(--device cuda --model preresnet20 --input 28 --images 50000 --batch-size 512 --epoch)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
  CAP_ENV=90; CAP_TESTS=180; CAP_BENCH=150; PACK_RESERVE=20
fi
CONTROL_ONLY=long-none,long-augment,long-P6-p0.1,long-P6-p0.3,noisy-none,noisy-augment,noisy-P6-p0.1,noisy-P6-p0.3
PLACEMENT_ONLY=none,P0,P2,P4,P6,H4,H5
RESIDUAL_ONLY=none,P0,P1,P2,P3,P4,P5,P6,P7
HEAD_ONLY=none,H1,H2,H3,H4,H5,H6,H7,P6+H4
END=$(( start + BUDGET ))

OUT=${OUT:-$ROOT/_build/gpu_check}
WORK=${GPU_CHECK_WORK:-$ROOT/_build/gpu_check_work}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)
case "$WORK" in /|"$ROOT"|"$HOME"|"$OUT") die "GPU_CHECK_WORK=$WORK would be emptied; give a scratch folder" ;; esac
RESULTS=$WORK/results
rm -f "$OUT"/{gpu_check.log,steps.tsv,nvidia-smi.txt,pytest.log,bench.json,records.tar.gz}
rm -rf "$WORK"
mkdir -p "$RESULTS"
export DROPLAB_RESULTS=$RESULTS DROPLAB_SCALE=$SCALE
if [ -z "${DROPLAB_DATA:-}" ] && [ -d "$ROOT/.gpu_data" ]; then export DROPLAB_DATA=$ROOT/.gpu_data; fi

exec 3>&1 4>&2 > >(tee -a "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
printf 'step\texit\tseconds\n' > "$OUT/steps.tsv"
FAILED=()
LAST_RC=0
DMON_PID=
MPS_ON=

left() { echo $(( END - $(date +%s) - PACK_RESERVE )); }

# step NAME CAP LOG CMD...: run CMD under `timeout` (at most CAP s, never past the deadline),
# its output also into LOG (or - for none); record the exit status; never stop the script.
step() {
  local name=$1 cap=$2 log=$3 limit rc t0
  shift 3
  limit=$(left)
  [ "$limit" -lt "$cap" ] || limit=$cap
  if [ "$limit" -lt 5 ]; then
    stamp "$name: skipped, no time left"
    printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
    LAST_RC=124
    return 0
  fi
  stamp "$name (at most ${limit}s): $*"
  t0=$(date +%s)
  set +e
  if [ "$log" = - ]; then
    timeout --kill-after=10 "$limit" "$@"; rc=$?
  else
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"; rc=${PIPESTATUS[0]}
  fi
  set -e
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$OUT/steps.tsv"
  LAST_RC=$rc
  if [ "$rc" -ne 0 ]; then
    FAILED+=("$name")
    stamp "$name: FAILED (exit $rc$([ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo ', timed out'))"
  else
    stamp "$name: ok ($(( $(date +%s) - t0 ))s)"
  fi
}

summary() {
  "$PY" - "$RESULTS" "$start" <<'EOF' || true
import json, sys, pathlib
root, since = pathlib.Path(sys.argv[1]), float(sys.argv[2])
from droplab import compare, records
for folder in sorted({p.parent for p in root.rglob("*.json")}):
    exp, sc, ds = folder.relative_to(root).parts
    recs = records.load_whole(exp, sc, ds, root)
    new = [r for r in recs if (folder / f"{r['config']['name']}-seed{r['seed']}.json").stat().st_mtime >= since]
    secs = [r["train_seconds"] for r in new]
    print(f"{exp} ({sc}, {ds}): {len(recs)} complete records, {len(new)} made now"
          + (f", train {min(secs):.0f}-{max(secs):.0f} s per run" if secs else "")
          + (f", on {new[0]['provenance']['device_name']} ({new[0]['fast_path']['precision']})" if new else ""))
    print(compare.text_table(recs))
EOF
}

pack() {
  local rc=$?
  set +e
  trap - EXIT
  stamp "pack into $OUT"
  [ -n "$DMON_PID" ] && kill "$DMON_PID" 2>/dev/null && wait "$DMON_PID" 2>/dev/null
  if [ -n "$MPS_ON" ]; then echo quit | nvidia-cuda-mps-control >/dev/null 2>&1; fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    { echo; echo "== nvidia-smi at the end"; nvidia-smi 2>&1
      [ -s "$WORK/dmon.txt" ] && { echo; echo "== nvidia-smi dmon during the sweeps (every 5 s)"; cat "$WORK/dmon.txt"; }
    } >> "$OUT/nvidia-smi.txt"
  fi
  [ -f "$OUT/nvidia-smi.txt" ] || echo "nvidia-smi: not found on this machine (${MODE} run on the ${DEVICE})" > "$OUT/nvidia-smi.txt"
  [ -f "$OUT/pytest.log" ] || echo "pytest did not run (see gpu_check.log)" > "$OUT/pytest.log"
  # complete records only: a run cut off leaves at most a .<name>.json.<pid>.tmp, never a *.json
  find "$RESULTS" -name '.*.tmp' -delete 2>/dev/null
  (cd "$RESULTS" && find . -name '*.json' | sort | tar -czf "$OUT/records.tar.gz" -T -)
  echo "records.tar.gz: $(tar -tzf "$OUT/records.tar.gz" | grep -c '\.json$') records"
  summary
  [ "$rc" -eq 0 ] && [ ${#FAILED[@]} -gt 0 ] && rc=1
  echo "failed steps: ${FAILED[*]:-none}"
  ls -l "$OUT"
  stamp "done, exit $rc (budget ${BUDGET}s)"
  exec 1>&3 2>&4                       # let tee see the end of its input and finish the log
  for _ in $(seq 50); do kill -0 "$TEE_PID" 2>/dev/null || break; sleep 0.1; done
  exit "$rc"
}
trap pack EXIT

# ---------------------------------------------------------------------------------------------
stamp "gpu_check: $MODE run ($SCALE scale, $DATASET, $DEVICE), budget ${BUDGET}s, $WORKERS sweep workers, $SEEDS seeds"
echo "repo $ROOT; python $PY; results $RESULTS; out $OUT; data ${DROPLAB_DATA:-the default lookup}"
[ -f "$ROOT/.gpu_data/SOURCE" ] && sed 's/^/.gpu_data: /' "$ROOT/.gpu_data/SOURCE"
# a copy of the folder without .git: records take their commit from the one --pack wrote down
if [ -z "${DROPLAB_GIT_COMMIT:-}" ] && ! git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1 && [ -f "$ROOT/.gpu_data/SOURCE" ]; then
  DROPLAB_GIT_COMMIT=$(sed -n 's/^commit \([0-9a-f]*\).*/\1/p' "$ROOT/.gpu_data/SOURCE" | head -1)
  [ -n "$DROPLAB_GIT_COMMIT" ] && export DROPLAB_GIT_COMMIT
fi

step environment "$CAP_ENV" - "$PY" - "$MODE" "$DATASET" "$ROOT" <<'EOF'
import os, platform, sys
mode, dataset, root = sys.argv[1:4]
try:
    import torch
except ImportError as exc:
    sys.exit(f"gpu_check: {sys.executable} cannot import torch ({exc}): set GPU_CHECK_PYTHON to a python "
             f"that has PyTorch with CUDA.")
print(f"python {platform.python_version()} at {sys.executable}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
if mode == "gpu" and not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA GPU here (torch.version.cuda={torch.version.cuda}). "
             f"Run it on the GPU machine, or use --dry-run on a CPU.")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
          f"compute capability {p.major}.{p.minor}; {os.cpu_count()} CPU cores")
import importlib.metadata, importlib.util
missing = [n for n in ("numpy", "torchvision", "tqdm", "matplotlib", "pytest") if importlib.util.find_spec(n) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages {missing}: pip install them (without a network: pip "
             f"download them elsewhere, copy the wheels over, pip install --no-index --find-links DIR)")
print(", ".join(f"{n} {importlib.metadata.version(n)}" for n in ("numpy", "torchvision", "tqdm", "matplotlib", "pytest")))
import droplab
from droplab import data
if not droplab.__file__.startswith(os.path.join(root, "lib")):
    sys.exit(f"gpu_check: droplab is imported from {droplab.__file__}, not from this checkout's lib/")
print(f"droplab {droplab.__version__} from {os.path.dirname(droplab.__file__)}")
if dataset != "synthetic" and not data.available(dataset):
    sys.exit(f"gpu_check: {dataset} is not on this machine (searched {[str(r) for r in data.roots()]}). "
             f"Name its folder in DROPLAB_DATA, or run `bash scripts/gpu_check.sh --pack` where it is and "
             f"copy .gpu_data/ along with the repository.")
print(f"{dataset}: found and checked")
EOF
[ "$LAST_RC" -eq 0 ] || die "the environment is not ready (above); nothing else can run"

if command -v nvidia-smi >/dev/null 2>&1; then
  stamp "nvidia-smi"
  { nvidia-smi 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv 2>&1
  } | tee "$OUT/nvidia-smi.txt"
fi

step tests "$CAP_TESTS" "$OUT/pytest.log" \
  env DROPLAB_SCALE=smoke "$PY" -m pytest -v -rs --durations=0 -o addopts= -p no:cacheprovider -m gpu tests/test_gpu.py

step bench "$CAP_BENCH" - "$PY" -m droplab.bench "${BENCH[@]}" --json "$OUT/bench.json"

# ---------------------------------------------------------------------------------------------
# The sweeps
# ---------------------------------------------------------------------------------------------
if [ "$MODE" = gpu ]; then
  # records committed by an earlier GPU check are reused (a sweep skips complete, current records)
  for exp in control placement residual head; do
    old=$ROOT/lib/droplab/results/$exp/$SCALE/$DATASET
    if ls "$old"/*.json >/dev/null 2>&1; then
      mkdir -p "$RESULTS/$exp/$SCALE/$DATASET"
      cp -p "$old"/*.json "$RESULTS/$exp/$SCALE/$DATASET/"
      echo "reusing $(ls "$old"/*.json | wc -l) committed $exp record(s) from lib/droplab/results"
    fi
  done
  if [ "${GPU_CHECK_MPS:-0}" = 1 ]; then
    if command -v nvidia-cuda-mps-control >/dev/null 2>&1; then
      export CUDA_MPS_PIPE_DIRECTORY=$WORK/mps-pipe CUDA_MPS_LOG_DIRECTORY=$WORK/mps-log
      mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
      if nvidia-cuda-mps-control -d </dev/null >/dev/null 2>&1 && MPS_ON=1 &&
         timeout 60 "$PY" -c "import torch; assert torch.ones(8, device='cuda').sum().item() == 8"; then
        stamp "CUDA MPS is on for the sweeps"
      else
        stamp "CUDA MPS did not work; the sweeps share the GPU by time-slicing"
        echo quit | nvidia-cuda-mps-control >/dev/null 2>&1 || true
        MPS_ON=; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
      fi
    else
      stamp "GPU_CHECK_MPS=1 but nvidia-cuda-mps-control is not here; time-slicing"
    fi
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi dmon -s puc -d 5 -o T </dev/null > "$WORK/dmon.txt" 2>&1 &
    DMON_PID=$!
  fi
fi

# The longest wall time of a run made in this session, in whole seconds (0 if none yet).
longest_run() {
  "$PY" - "$RESULTS" "$start" <<'EOF' 2>/dev/null || echo 0
import json, math, pathlib, sys
root, since = pathlib.Path(sys.argv[1]), float(sys.argv[2])
w = [json.loads(p.read_text()).get("wall_seconds") or 0 for p in root.rglob("*.json") if p.stat().st_mtime >= since]
print(math.ceil(max(w, default=0)))
EOF
}

# sweep EXPERIMENT CONFIGS: seeds 0..SEEDS-1 in phases of WORKERS/configs seeds (at least one).
# A phase starts only if it fits before the deadline, judged by the longest run so far (the
# first phase of the session always tries: nothing is measured yet and nothing else is left).
SWEEP_STOP=
sweep() {
  local exp=$1 only=$2 n_cfg per k=0 next measured run_s waves need room limit
  n_cfg=$(echo "$only" | tr ',' '\n' | wc -l)
  per=$(( WORKERS / n_cfg )); [ "$per" -ge 1 ] || per=1
  while [ "$k" -lt "$SEEDS" ] && [ -z "$SWEEP_STOP" ]; do
    next=$(( k + per )); [ "$next" -le "$SEEDS" ] || next=$SEEDS
    measured=$(longest_run)
    run_s=$measured; [ "$run_s" -gt 0 ] || run_s=$FIRST_RUN_S
    # (next-k)*n_cfg runs on WORKERS processes: about `waves` run times, plus ~15 s of start-up
    waves=$(( ( (next - k) * n_cfg + WORKERS - 1 ) / WORKERS ))
    need=$(( waves * run_s * 115 / 100 + 15 ))
    room=$(left)
    if { [ "$measured" -gt 0 ] && [ "$room" -lt "$need" ]; } || [ "$room" -lt 30 ]; then
      stamp "$exp seeds $k-$(( next - 1 )): not started (${room}s left; $([ "$measured" -gt 0 ] \
        && echo "about ${need}s needed" || echo "at least 30s needed")); run the check again to resume"
      printf '%s\tnot started\t0\n' "sweep-$exp-seeds$next" >> "$OUT/steps.tsv"
      SWEEP_STOP=1
      return 0
    fi
    # no run starts after `limit` (so the last ones end before the deadline); `timeout` is the hard stop
    limit=$(( room - run_s * 115 / 100 - 5 )); [ "$limit" -ge 20 ] || limit=20   # workers need ~10 s to start
    step "sweep-$exp-seeds$next" "$room" - "$PY" -m droplab.sweep run "$exp" --scale "$SCALE" \
      --dataset "$DATASET" --seeds "$next" --only "$only" --workers "$WORKERS" --time-limit "$limit" \
      --device "$DEVICE"
    case "$LAST_RC" in
      0) ;;
      124|137) SWEEP_STOP=1; return 0 ;;     # out of time: nothing more starts
      *) return 0 ;;                          # runs failed: the next experiment may still work
    esac
    k=$next
  done
}

sweep control "$CONTROL_ONLY"
sweep placement "$PLACEMENT_ONLY"
sweep residual "$RESIDUAL_ONLY"
sweep head "$HEAD_ONLY"
stamp "sweeps finished"
