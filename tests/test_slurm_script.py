"""The Slurm job-array script shares a sweep between array tasks without losing or repeating a run."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_array_tasks_together_run_every_config_once(tmp_path):
    env = dict(os.environ, DROPLAB_SCALE="smoke", OMP_NUM_THREADS="1", SLURM_ARRAY_TASK_COUNT="2",
               SLURM_SUBMIT_DIR=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for task in ("0", "1"):
        subprocess.run(["bash", str(ROOT / "scripts" / "sweep.sbatch"), "head", "1", "--dataset", "synthetic",
                        "--only", "none,H4,H5", "--results", str(tmp_path)],
                       env=dict(env, SLURM_ARRAY_TASK_ID=task), check=True, capture_output=True, timeout=300)
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json")]
    names = sorted(r["config"]["name"] for r in records)
    assert names == ["H4", "H5", "none"]
