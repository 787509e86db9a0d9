# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Appendix: reproducing the records
#
# The accuracy results of chapters 3, 4 and 6 are built from run records that
# `droplab.sweep` wrote and that the repository commits, inside the package so
# that they travel with it (`lib/droplab/results/`; its README describes a
# record). Each record carries the commit, the torch version, the device and the
# date it was made. This appendix lists what is committed, shows the paper-scale
# records where they exist, and says how to make both kinds yourself.

# %% tags=["remove-cell"]
# Where droplab is not installed yet, install it: from the checkout of the book around this notebook
# (Binder, a clone), else (Colab: the notebook alone) from the repository in DROPLAB_REPOSITORY, the
# `repository: url` of the book's _config.yml. droplab downloads Fashion-MNIST if it is missing.
import importlib.util
import os
import pathlib
import subprocess
import sys

if importlib.util.find_spec("droplab") is None:
    book = next((str(d) for d in pathlib.Path("_").resolve().parents if (d / "lib" / "droplab").is_dir()), None)  # this folder or one above
    source = book or os.environ.get("DROPLAB_REPOSITORY") or sys.exit("droplab is not installed and this notebook is not in a checkout of the book: run %env DROPLAB_REPOSITORY=https://github.com/OWNER/NAME (OWNER/NAME as in this page's Colab address), then this cell again.")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *(["-e", book] if book else [f"droplab @ git+{source}"])], check=True)

# %% tags=["remove-cell"]
import pandas as pd

from droplab import metrics, records

# %% [markdown]
# ## What is committed
#
# One row per folder of records, loaded whole (every record checked against the
# registry), with the training time summed over its runs:

# %%
records_table = pd.DataFrame(records.inventory())
records_table["minutes"] = records_table["minutes"].round(0).astype(int)
metrics.styled(records_table, "The committed run records (CPU-core minutes of training and evaluation)")

# %% [markdown]
# Where each experiment's records were made (device, torch, commits):

# %%
for experiment in sorted({row["experiment"] for row in records.inventory()}):
    print(f"{experiment}: {records.provenance_summary(records.load_whole(experiment, 'class'))}")

# %% [markdown]
# ## Paper-scale records
#
# The `paper` scale (PreResNet-20 on the whole training set, or the noisy-label
# regime on 5,000 images, one GPU) is made with the commands below. Its records,
# where they exist, are shown here whole, or refused by name if any is missing,
# corrupt or stale; where none exist yet the cell says which command makes them.

# %%
for experiment in ("control", "placement", "residual", "head"):
    print(records.paper_scale_report(experiment, "fashion-mnist"))

# %% [markdown]
# ## The experiments
#
# ```bash
# python -m droplab.sweep list
# ```
#
# lists the registered experiments (`residual`: no dropout and P0–P7 in every
# PreResNet block, plus the bottleneck and ResNetV1 variants with and without
# {prf:ref}`guideline-1`; `residual-56`: the same with PreResNet-56; `head`: no dropout,
# H1–H7 and P6+H4) and their configurations. The sizes of each scale (depth,
# width, epochs, training-set size, batch size, drop probability) live next to
# the configurations in `lib/droplab/experiments.py`, so a sweep at any scale runs
# the same code.
#
# ## On one GPU
#
# ```bash
# python -m droplab.sweep run residual --scale paper --seeds 3
# python -m droplab.sweep run head --scale paper --seeds 3
# python -m droplab.sweep table residual --scale paper      # mean ± 95% CI, difference from no dropout, and a CSV
# ```
#
# Each run writes one JSON record, atomically (a temporary file renamed into
# place), so a sweep that is killed (a pre-empted job, a closed laptop) is
# simply started again: finished runs are skipped, the interrupted one is redone,
# and no run is lost or counted twice. `--dataset cifar10` (or `cifar100`)
# switches data set where the CIFAR archives are available (see
# `data/README.md`); `--only none,P0,P6` runs a subset.
#
# ## On several GPUs
#
# `--shard i/n` gives shard `i` every `n`-th run of the sweep, in a fixed order,
# so `n` processes share a sweep without talking to each other:
#
# ```bash
# for k in 0 1 2 3; do
#   CUDA_VISIBLE_DEVICES=$k python -m droplab.sweep run residual --scale paper --seeds 3 --shard $k/4 &
# done; wait
# ```
#
# ## On a Slurm cluster
#
# `scripts/sweep.sbatch` is a job array with one shard per task:
#
# ```bash
# sbatch --array=0-3 --gres=gpu:1 --cpus-per-task=8 scripts/sweep.sbatch residual 3
# sbatch --array=0-3 --gres=gpu:1 --cpus-per-task=8 scripts/sweep.sbatch head 3 --dataset cifar10
# sbatch --array=0-3 --cpus-per-task=4 scripts/sweep.sbatch residual 3    # a CPU-only cluster
# ```
#
# A task that fails can be resubmitted on its own, saying how many tasks the
# array had (`DROPLAB_SHARDS=4 sbatch --array=2 ...`).
#
# ## The GPU check: one command on any CUDA machine
#
# `scripts/gpu_check.sh` runs, in one command within a fixed time budget (470 s
# unless `GPU_CHECK_BUDGET` says otherwise), the CUDA tests (`tests/test_gpu.py`:
# bf16 autocast, channels_last, fused SGD, determinism, `torch.compile`,
# divergence, BN recalibration on the GPU), the benchmark (`python -m
# droplab.bench --device cuda --model preresnet20 --input 28 --images 50000
# --batch-size 512 --epoch`) and then the paper-scale `residual` sweep (no
# dropout, P0–P7, 3 seeds) and, if time is left, `head` (no dropout, H1–H7,
# P6+H4), nine worker processes sharing the GPU. Before those it runs the
# paper-scale positive control (`control`) and the placement study
# (`placement`), so that a GPU run first shows that its regime can show a
# regularizer's benefit. It installs and downloads
# nothing: it uses the machine's own Python and PyTorch (`.venv/bin/python` if
# the folder has one, else `python3`, or the one `GPU_CHECK_PYTHON` names) and
# imports `droplab` from `lib/`, so it runs the same on a machine without network.
# A sweep starts a seed only if the slowest run so far says it will finish in
# time, and records are written whole or not at all, so what the check leaves is
# complete; the records already committed are reused, so running it again
# continues where the last one stopped.
#
# 1. Fashion-MNIST must be on the GPU machine where droplab looks for it (the
#    folder in `DROPLAB_DATA`, the repository's `data/`, Debian's
#    `dataset-fashion-mnist`); the check itself never downloads. With a network
#    there, `python -c "from droplab import data; data.load('fashion-mnist')"`
#    downloads it once, checksummed. Without one, run where the data set is
#
#    ```bash
#    bash scripts/gpu_check.sh --pack        # Fashion-MNIST into .gpu_data/ (git-ignored, about 30 MB, sha256-checked)
#    bash scripts/gpu_check.sh --dry-run     # optional: every step on the CPU at smoke scale, a minute or two
#    ```
#
#    and copy the repository's folder, `.gpu_data/` included, to the GPU machine
#    (`--pack` prints an `rsync` command that does it and the size to copy).
#
# 2. On the GPU machine, in the repository's folder:
#
#    ```bash
#    bash scripts/gpu_check.sh
#    ```
#
#    `GPU_CHECK_BUDGET` (seconds, default 470), `GPU_CHECK_WORKERS` (default 9)
#    and `GPU_CHECK_SEEDS` (default 3) change its size; `GPU_CHECK_MPS=1` tries
#    CUDA MPS for the sweep workers and falls back to plain sharing if it does
#    not start.
#
# 3. What it leaves, six files in `$OUT` (by default `_build/gpu_check/`):
#    `gpu_check.log` (every step, stamped with its time, and the tables of the
#    new records), `steps.tsv` (each step's exit status and seconds),
#    `pytest.log`, `bench.json` (fast and reference images/s, their ratio,
#    TFLOP/s and share of the bf16 peak, one full epoch's wall time),
#    `nvidia-smi.txt` (before, after, and `nvidia-smi dmon` during the sweeps)
#    and `records.tar.gz`.
#
# 4. Commit the records where the chapters read them:
#
#    ```bash
#    tar -xzf records.tar.gz -C lib/droplab/results    # -> residual/paper/fashion-mnist/*.json, head/...
#    python -m droplab.sweep table residual --scale paper
#    git add lib/droplab/results/residual/paper/fashion-mnist lib/droplab/results/head/paper/fashion-mnist
#    ```
#
# ## From records to the book
#
# Copy (or commit) the records under `lib/droplab/results/` and rebuild the book:
# the section "What is committed" above lists every folder and shows the
# paper-scale tables where records exist, with the machine and commit that made
# them; where none exist it prints the command that makes them. The book never
# shows numbers that were not measured.
#
# ## For instructors: the student edition
#
# ```bash
# python scripts/student_edition.py _build/student
# ```
#
# writes one notebook per chapter into `_build/student` with every exercise kept and
# every solution removed (each solution's cells, from the fence that opens it to
# the fence that closes it); all other cells are the chapter's own. Hand that
# folder to the class. This book and the repository's notebooks, where each
# solution follows its exercise, are the answer key.
