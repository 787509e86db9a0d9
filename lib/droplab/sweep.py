"""The experiment registry and the resumable, shardable sweep runner.

An :class:`Experiment` is a list of :class:`Config` (what differs between
runs: where dropout sits) and one :class:`Sizes` per scale (how big a run is).
A sweep trains every (config, seed) pair and writes one JSON record per run::

    data/results/<experiment>/<scale>/<dataset>/<config>-seed<k>.json

From Python (chapters 3-5)::

    records = sweep.run("residual", scale="class", seeds=2, only=["none", "P0", "P6"])
    rows = sweep.table(records)            # mean +- 95% CI per config, difference from baseline
    print(sweep.format_table(rows))

From a shell (one GPU, or a Slurm array / several GPUs sharing the work)::

    python -m droplab.sweep list
    python -m droplab.sweep run residual --scale paper --seeds 3 --shard 0/2
    python -m droplab.sweep table residual --scale paper

Records are written atomically (temporary file, fsync, rename); a rerun skips
complete records and redoes missing, partial or corrupt ones, so a killed sweep
resumes where it stopped. ``--shard i/n`` takes every n-th run of the sorted
plan, starting at i, so n workers share a sweep without talking to each other.
The results folder is ``data/results`` in the repository, or ``DROPLAB_RESULTS``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from droplab import scale as _scale

REPO_RESULTS = Path(__file__).resolve().parents[2] / "data" / "results"
METRIC = "final_test_acc"


# ----------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """One network of an experiment: the architecture and where dropout sits.

    ``baseline`` names the config this one is compared with in :func:`table`.
    """

    name: str
    arch: str = "preresnet"            # "preresnet" or "resnetv1"
    block: str = "basic"               # "basic" or "bottleneck" (PreResNet)
    dropout_at: str | None = None      # P0-P7 (droplab.models.POSITIONS)
    head_dropout_at: str | None = None  # H1-H7 (droplab.models.HEAD_POSITIONS)
    head_conv: bool = False
    baseline: str = "none"


@dataclass(frozen=True)
class Sizes:
    """How big one run is at one scale (``None`` sizes mean the whole split)."""

    depth: int
    width: int
    epochs: int
    train_size: int | None
    test_size: int | None
    batch_size: int
    p: float = 0.1
    lr: float = 0.1
    warmup_epochs: float = 1.0
    bottleneck_depth: int = 11


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    configs: tuple[Config, ...]
    sizes: dict[str, Sizes] = field(hash=False)
    dataset: str = "fashion-mnist"

    @property
    def config_names(self) -> list[str]:
        return [c.name for c in self.configs]

    def config(self, name: str) -> Config:
        for c in self.configs:
            if c.name == name:
                return c
        raise ValueError(f"experiment {self.name!r} has no config {name!r}; "
                         f"valid configs are {', '.join(self.config_names)}")


SMOKE = Sizes(depth=8, width=8, epochs=1, train_size=256, test_size=256, batch_size=64,
              warmup_epochs=0.5, bottleneck_depth=11)
CLASS = Sizes(depth=8, width=12, epochs=4, train_size=4000, test_size=2000, batch_size=64,
              warmup_epochs=0.5, bottleneck_depth=11)


def _residual(name: str, paper_depth: int, class_depth: int) -> Experiment:
    """P0-P7 on PreResNet (Kim et al. Table 1), Guideline 1 on bottleneck PreResNet
    (Table 2) and ResNetV1 (Table 3), each against its own no-dropout baseline."""
    configs = [Config("none")] + [Config(p, dropout_at=p) for p in (f"P{i}" for i in range(8))]
    configs += [Config("bottleneck-none", block="bottleneck", baseline="bottleneck-none"),
                Config("bottleneck-P6", block="bottleneck", dropout_at="P6", baseline="bottleneck-none"),
                Config("resnetv1-none", arch="resnetv1", baseline="resnetv1-none"),
                Config("resnetv1-P6", arch="resnetv1", dropout_at="P6", baseline="resnetv1-none")]
    return Experiment(
        name, f"dropout at P0-P7 in every residual block, PreResNet-{paper_depth} at paper scale "
              f"(Kim et al. Tables 1-3, Guideline 1)",
        tuple(configs),
        # class: 13 configs x 2-3 seeds fit chapter 3's 5-minute budget on a 2-core CPU (about 5-10 s a run)
        {"smoke": SMOKE, "class": replace(CLASS, depth=class_depth, width=8, epochs=3, train_size=2000,
                                          test_size=2000, batch_size=32),
         "paper": Sizes(depth=paper_depth, width=16, epochs=20, train_size=None, test_size=None,
                        batch_size=128, bottleneck_depth=paper_depth if paper_depth % 9 == 2 else 29)})


def _head() -> Experiment:
    """H1-H7 in a MobileNetV2-style head (Kim et al. Figure 4, Tables 5-6, Guideline 2)."""
    configs = [Config("none", head_conv=True)]
    configs += [Config(h, head_dropout_at=h, head_conv=True) for h in (f"H{i}" for i in range(1, 8))]
    configs += [Config("P6+H4", dropout_at="P6", head_dropout_at="H4", head_conv=True)]
    return Experiment(
        "head", "dropout at H1-H7 in a head with a 1x1 Conv-BN-ReLU before GAP, and Guidelines 1+2 "
                "together (Kim et al. Figure 4, Tables 5-6, Guideline 2)",
        tuple(configs),
        # class: 4 configs x 3 seeds (+1 run) and chapter 4's other measurements fit its 5-minute
        # budget on a 2-core CPU (about 8 s a run)
        {"smoke": SMOKE, "class": replace(CLASS, train_size=2000),
         "paper": Sizes(depth=20, width=16, epochs=20, train_size=None, test_size=None, batch_size=128)})


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    _residual("residual", 20, 8), _residual("residual-56", 56, 14), _head())}

# Augmentation per data set: Fashion-MNIST and CIFAR crop (pad 2 at 28 px, 4 at 32 px) and flip;
# the synthetic patterns are not mirror-symmetric, so no flip there.
AUGMENT: dict[str, dict[str, Any]] = {
    "fashion-mnist": {"pad": 2, "flip": True}, "cifar10": {"pad": 4, "flip": True},
    "cifar100": {"pad": 4, "flip": True}, "synthetic": {"pad": 2, "flip": False},
}


def get(experiment: str | Experiment) -> Experiment:
    """The registered experiment called ``experiment`` (an error lists the valid names)."""
    if isinstance(experiment, Experiment):
        return experiment
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; valid experiments are {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[experiment]


def build_model(config: Config, sizes: Sizes, in_channels: int, num_classes: int):
    """The network of ``config`` at ``sizes``."""
    from droplab import models

    common = dict(num_classes=num_classes, in_channels=in_channels, width=sizes.width,
                  dropout_at=config.dropout_at, head_dropout_at=config.head_dropout_at,
                  p=sizes.p, head_conv=config.head_conv)
    if config.arch == "resnetv1":
        return models.ResNetV1(sizes.depth, **common)
    if config.arch == "preresnet":
        depth = sizes.bottleneck_depth if config.block == "bottleneck" else sizes.depth
        return models.PreResNet(depth, block=config.block, **common)
    raise ValueError(f"unknown arch {config.arch!r}; valid archs are preresnet, resnetv1")


# ----------------------------------------------------------------------------
# Planning and sharding
# ----------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Run:
    """One (seed, config) pair; the plan is sorted by seed, then registry order."""

    seed: int
    index: int
    config: str

    @property
    def key(self) -> str:
        return f"{self.config}-seed{self.seed}"


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"bad shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4, 1/4, 2/4, 3/4 "
                         f"for four workers")
    return i, n


def _seeds(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}")
        return list(range(seeds))
    return sorted(set(int(s) for s in seeds))


def plan(experiment: str | Experiment, seeds: int | Iterable[int] = 1, only: Sequence[str] | None = None,
         shard: str | tuple[int, int] | None = None) -> list[Run]:
    """The runs of a sweep, in order; ``shard=(i, n)`` keeps those at positions i, i+n, i+2n, ..."""
    exp = get(experiment)
    names = exp.config_names if only is None else list(only)
    for name in names:
        exp.config(name)  # raises on an unknown name
    runs = sorted(Run(s, exp.config_names.index(c), c) for s in _seeds(seeds) for c in names)
    i, n = shard if isinstance(shard, tuple) else parse_shard(shard)
    return runs[i::n]


# ----------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------

def results_root(results_dir: str | Path | None = None) -> Path:
    return Path(results_dir or os.environ.get("DROPLAB_RESULTS") or REPO_RESULTS)


def record_dir(experiment: str, scale: str, dataset: str, results_dir: str | Path | None = None) -> Path:
    return results_root(results_dir) / experiment / scale / dataset


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path`` if it is complete and valid, else None."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(rec, dict) and rec.get("status") == "complete" and isinstance(rec.get("history"), dict)
          and path.name == f"{rec.get('config', {}).get('name')}-seed{rec.get('seed')}.json")
    return rec if ok else None


def write_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON so that ``path`` holds either nothing or the whole record: a temporary
    file in the same folder (not ``*.json``, so never read as a record), fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def load_records(experiment: str | Experiment, scale: str | None = None, dataset: str | None = None,
                 results_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """All complete records of a sweep, sorted by (seed, config order); partial files are skipped."""
    exp = get(experiment)
    folder = record_dir(exp.name, _scale.validate(scale or _scale.current()), dataset or exp.dataset, results_dir)
    recs = [r for r in (read_record(p) for p in sorted(folder.glob("*.json"))) if r is not None]
    order = {n: i for i, n in enumerate(exp.config_names)}
    return sorted(recs, key=lambda r: (r["seed"], order.get(r["config"]["name"], len(order))))


# ----------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------

def run_one(experiment: str | Experiment, config: str | Config, seed: int, *, scale: str | None = None,
            dataset: str | None = None, results_dir: str | Path | None = None,
            device: str | None = None) -> dict[str, Any]:
    """Train one (config, seed) and write its record; returns the record."""
    import torch
    from droplab import data, models, repro, train

    exp = get(experiment)
    cfg = config if isinstance(config, Config) else exp.config(config)
    sc = _scale.validate(scale or _scale.current())
    ds = dataset or exp.dataset
    sizes = exp.sizes[sc]
    info = data.info(ds)
    tr, te = data.load(ds, "train"), data.load(ds, "test")
    if sizes.train_size:
        tr = data.subset(tr, sizes.train_size, seed=0)     # the same images for every config and seed
    if sizes.test_size:
        te = data.subset(te, sizes.test_size, seed=0)
    dev = repro.device(device)
    repro.seed_everything(seed)
    model = build_model(cfg, sizes, info.shape[0], info.num_classes)
    settings = dict(batch_size=sizes.batch_size, lr=sizes.lr, warmup_epochs=sizes.warmup_epochs,
                    **AUGMENT.get(ds, {}), seed=seed)
    t0 = time.perf_counter()
    hist = train.fit(model, tr, te, sizes.epochs, device=dev, progress=False,
                     deterministic=sc != "paper", **settings)
    wall = time.perf_counter() - t0
    record = {
        "status": "complete", "experiment": exp.name, "scale": sc, "dataset": ds,
        "config": asdict(cfg), "seed": seed, "sizes": asdict(sizes), "fit": settings,
        "num_parameters": models.num_parameters(model), "train_size": len(tr.labels),
        "test_size": len(te.labels), "history": hist.to_dict(),
        METRIC: hist.final_test_acc if math.isfinite(hist.final_test_acc) else None,
        "wall_seconds": wall, "provenance": repro.provenance(dev),
    }
    write_atomic(record_dir(exp.name, sc, ds, results_dir) / f"{cfg.name}-seed{seed}.json", record)
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return record


def run(experiment: str | Experiment, scale: str | None = None, seeds: int | Iterable[int] = 1, *,
        only: Sequence[str] | None = None, dataset: str | None = None, results_dir: str | Path | None = None,
        shard: str | tuple[int, int] | None = None, device: str | None = None,
        progress: bool = True) -> list[dict[str, Any]]:
    """Run the sweep (or its shard) and return the records of its runs, old and new.

    Complete records are reused; missing, partial or corrupt ones are (re)done.
    ``seeds`` is a count (seeds 0..N-1) or a list; ``only`` a subset of configs.
    """
    from tqdm.auto import tqdm

    exp = get(experiment)
    sc = _scale.validate(scale or _scale.current())
    ds = dataset or exp.dataset
    folder = record_dir(exp.name, sc, ds, results_dir)
    records = []
    runs = plan(exp, seeds, only, shard)
    bar = tqdm(runs, desc=f"{exp.name} ({sc}, {ds})", unit="run",
               disable=not progress or _scale.current() == "smoke")
    for r in bar:
        path = folder / f"{r.key}.json"
        rec = read_record(path)
        if rec is None:
            for stale in folder.glob(f".{path.name}.*.tmp"):   # left by a killed run of this key
                stale.unlink(missing_ok=True)
            bar.set_postfix_str(r.key)
            rec = run_one(exp, r.config, r.seed, scale=sc, dataset=ds, results_dir=results_dir, device=device)
        records.append(rec)
    return records


# ----------------------------------------------------------------------------
# Tables: mean +- 95% confidence interval over seeds
# ----------------------------------------------------------------------------

# t_{0.975, df} for df = 1..30 (two-sided 95%).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """Student's t quantile t_{0.975, df}: a table to df=30, then the Cornish-Fisher
    expansion z + (z^3 + z)/(4 df) + (5z^5 + 16z^3 + 3z)/(96 df^2) with z = 1.96."""
    if df < 1:
        return math.nan
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width t_{0.975, n-1} s / sqrt(n); the half-width is NaN for n < 2."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t975(n - 1) * s / math.sqrt(n)


@dataclass
class Row:
    config: str
    n: int
    mean: float
    ci95: float
    baseline: str
    diff: float
    diverged: int = 0


def table(records: Sequence[dict[str, Any]], metric: str = METRIC) -> list[Row]:
    """One row per config: n runs, mean and 95% CI of ``metric``, and the difference of
    the mean from the config's baseline (``Config.baseline``). Diverged runs are counted
    in ``diverged`` and left out of the mean."""
    by: dict[str, list[float]] = {}
    diverged: dict[str, int] = {}
    baselines: dict[str, str] = {}
    for r in records:
        name = r["config"]["name"]
        baselines[name] = r["config"].get("baseline", "none")
        v = r.get(metric)
        by.setdefault(name, [])
        if v is None or not math.isfinite(v) or r["history"].get("diverged"):
            diverged[name] = diverged.get(name, 0) + 1
        else:
            by[name].append(float(v))
    stats = {k: mean_ci95(v) for k, v in by.items()}
    rows = []
    for name, vals in by.items():
        mean, ci = stats[name]
        base = baselines[name]
        diff = mean - stats[base][0] if base in stats else math.nan
        rows.append(Row(name, len(vals), mean, ci, base, diff, diverged.get(name, 0)))
    return rows


def format_table(rows: Sequence[Row], percent: bool = True) -> str:
    """A plain-text table; accuracy in percent, 'n/a (n=1)' where one seed gives no CI."""
    k = 100.0 if percent else 1.0
    lines = [f"{'config':<18} {'n':>3} {'mean':>8} {'95% CI':>13} {'diff':>8}  baseline"]
    for r in rows:
        ci = f"± {k * r.ci95:.2f}" if math.isfinite(r.ci95) else f"n/a (n={r.n})"
        diff = "" if r.config == r.baseline else (f"{k * r.diff:+.2f}" if math.isfinite(r.diff) else "n/a")
        note = f"  ({r.diverged} diverged)" if r.diverged else ""
        lines.append(f"{r.config:<18} {r.n:>3} {k * r.mean:>8.2f} {ci:>13} {diff:>8}  {r.baseline}{note}")
    return "\n".join(lines)


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "n", "mean", "ci95", "baseline", "diff", "diverged"])
        for r in rows:
            w.writerow([r.config, r.n, r.mean, r.ci95, r.baseline, r.diff, r.diverged])
    return path


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m droplab.sweep", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments and their configs")
    for name in ("run", "table"):
        p = sub.add_parser(name, help=f"{name} an experiment")
        p.add_argument("experiment")
        p.add_argument("--scale", default=None, help=f"one of {', '.join(_scale.SCALES)} (default: DROPLAB_SCALE)")
        p.add_argument("--dataset", default=None, help="fashion-mnist (default), cifar10, cifar100, synthetic")
        p.add_argument("--results", default=None, help="results folder (default: DROPLAB_RESULTS or data/results)")
        if name == "run":
            p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
            p.add_argument("--shard", default=None, help="i/n: run every n-th run starting at i")
            p.add_argument("--only", default=None, help="comma-separated configs, e.g. none,P0,P6")
            p.add_argument("--device", default=None, help="cuda, cpu, ... (default: droplab.repro.device())")
    args = ap.parse_args(argv)
    try:
        if args.command == "list":
            for e in EXPERIMENTS.values():
                print(f"{e.name}: {e.description}\n  configs: {', '.join(e.config_names)}")
            return 0
        exp = get(args.experiment)
        sc = _scale.validate(args.scale or _scale.current())
        ds = args.dataset or exp.dataset
        if args.command == "run":
            only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
            recs = run(exp, sc, args.seeds, only=only, dataset=ds, results_dir=args.results,
                       shard=args.shard, device=args.device)
            print(f"{len(recs)} runs complete in {record_dir(exp.name, sc, ds, args.results)}")
            return 0
        recs = load_records(exp, sc, ds, args.results)
        if not recs:
            print(f"no records in {record_dir(exp.name, sc, ds, args.results)}; "
                  f"make them with: python -m droplab.sweep run {exp.name} --scale {sc}", file=sys.stderr)
            return 1
        rows = table(recs)
        print(format_table(rows))
        out = write_csv(rows, record_dir(exp.name, sc, ds, args.results) / "table.csv")
        print(f"written {out}")
        return 0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
