"""The experiment registry and the resumable, shardable sweep runner.

An :class:`Experiment` is a list of :class:`Config` (what differs between
runs: where dropout sits, with which p) and one :class:`Sizes` per scale (the
network's size, the data and the training :class:`droplab.train.Recipe`).
:func:`spec` resolves a (config, scale) into everything that decides a run.
A sweep trains every (config, seed) pair and writes one JSON record per run::

    data/results/<experiment>/<scale>/<dataset>/<config>-seed<k>.json

with the spec, the history, the fast path used, the provenance and, measured
after training with dropout off, ``final_train_acc`` (un-augmented training
images), ``final_val_acc`` (images held out of the training split) and
``final_test_acc``.

From Python (chapters 3-5)::

    records = sweep.check_records("residual", "class", seeds=5)   # committed, whole and current, or an error
    rows = sweep.table(records)        # mean +- 95% CI, paired difference from the baseline, power
    records = sweep.run("residual", scale="smoke", seeds=1, only=["none", "P6"])   # train (or reuse)

From a shell (a CPU's cores, one GPU, or a Slurm array / several GPUs sharing the work)::

    python -m droplab.sweep list
    python -m droplab.sweep run residual --scale class --seeds 5 --workers 2
    python -m droplab.sweep run residual --scale paper --seeds 3 --shard 0/2 --time-limit 400
    python -m droplab.sweep table residual --scale class

Records are written atomically (temporary file, fsync, rename); a rerun skips
complete, current records and redoes missing, partial, corrupt or stale ones
(made with other settings than the registry's), so a killed sweep resumes where
it stopped. ``--workers N`` trains N runs at once in processes of their own;
``--shard i/n`` takes every n-th run of the sorted plan, starting at i, so n
machines share a sweep without talking to each other. The results folder is
``data/results`` in the repository, or ``DROPLAB_RESULTS``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from droplab import metrics
from droplab import scale as _scale
from droplab.models import HEAD_POSITION_NAMES, POSITION_NAMES
from droplab.train import Recipe

REPO_RESULTS = Path(__file__).resolve().parents[2] / "data" / "results"
METRIC = "final_test_acc"
SPLIT_SEED = 0          # the same training, validation and test images for every config and seed


# ----------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """One network of an experiment: the architecture and where dropout sits.

    ``p`` is its drop probability (None: the scale's ``Sizes.p``), so each
    position can carry the p chosen for it on the validation split.
    ``changes`` sets other fields of the run for this config alone (a size,
    e.g. ``("width", 32)``, or a :class:`droplab.train.Recipe` field, e.g.
    ``("augment", False)``): the pilot that chooses a regime varies these.
    ``baseline`` names the config this one is compared with in :func:`table`.
    """

    name: str
    arch: str = "preresnet"            # "preresnet" or "resnetv1"
    block: str = "basic"               # "basic" or "bottleneck" (PreResNet)
    dropout_at: str | None = None      # P0-P7 (droplab.models.POSITIONS)
    head_dropout_at: str | None = None  # H1-H7 (droplab.models.HEAD_POSITIONS)
    head_conv: bool = False
    baseline: str = "none"
    p: float | None = None
    changes: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Sizes:
    """How big one run is at one scale: the network, the data (``None`` sizes mean the
    whole split; ``val_size`` images are held out of the training images) and the
    training :class:`droplab.train.Recipe` (augmentation follows the data set)."""

    depth: int
    width: int
    train_size: int | None
    test_size: int | None
    recipe: Recipe
    val_size: int = 0
    p: float = 0.1
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


SMOKE = Sizes(depth=8, width=8, train_size=256, test_size=256, val_size=128,
              recipe=Recipe(epochs=1, batch_size=64, warmup_epochs=0.5, eval_every=1))

# The evidence regime of chapters 3-4 (class scale), chosen by the `regime` pilot on the
# validation split: the no-dropout network fits its training images and generalizes worse.
EVIDENCE = Sizes(depth=8, width=16, train_size=1000, test_size=5000, val_size=2000,
                 recipe=Recipe(epochs=25, batch_size=64, lr=0.1, warmup_epochs=1.0, augment=False,
                               eval_every=25))
# The sizes the pilot started from (its configs change size, width, augmentation and epochs).
PILOT = Sizes(depth=8, width=16, train_size=1000, test_size=None, val_size=2000,
              recipe=Recipe(epochs=20, batch_size=64, lr=0.1, warmup_epochs=1.0, augment=False, eval_every=20))
PAPER = Sizes(depth=20, width=16, train_size=None, test_size=None, val_size=5000,
              recipe=Recipe(epochs=20, batch_size=128, eval_every=20))

P_GRID: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)


def _residual(name: str, paper_depth: int) -> Experiment:
    """P0-P7 on PreResNet (Kim et al. Table 1), Guideline 1 on bottleneck PreResNet
    (Table 2) and ResNetV1 (Table 3), each against its own no-dropout baseline."""
    configs = [Config("none")] + [Config(p, dropout_at=p) for p in POSITION_NAMES]
    configs += [Config("bottleneck-none", block="bottleneck", baseline="bottleneck-none"),
                Config("bottleneck-P6", block="bottleneck", dropout_at="P6", baseline="bottleneck-none"),
                Config("resnetv1-none", arch="resnetv1", baseline="resnetv1-none"),
                Config("resnetv1-P6", arch="resnetv1", dropout_at="P6", baseline="resnetv1-none")]
    return Experiment(
        name, f"dropout at P0-P7 in every residual block, PreResNet-{paper_depth} at paper scale "
              f"(Kim et al. Tables 1-3, Guideline 1)",
        tuple(configs),
        {"smoke": SMOKE, "class": EVIDENCE,
         "paper": replace(PAPER, depth=paper_depth, bottleneck_depth=paper_depth if paper_depth % 9 == 2 else 29)})


def _head() -> Experiment:
    """H1-H7 in a MobileNetV2-style head (Kim et al. Figure 4, Tables 5-6, Guideline 2)."""
    configs = [Config("none", head_conv=True)]
    configs += [Config(h, head_dropout_at=h, head_conv=True) for h in HEAD_POSITION_NAMES]
    configs += [Config("P6+H4", dropout_at="P6", head_dropout_at="H4", head_conv=True)]
    return Experiment(
        "head", "dropout at H1-H7 in a head with a 1x1 Conv-BN-ReLU before GAP, and Guidelines 1+2 "
                "together (Kim et al. Figure 4, Tables 5-6, Guideline 2)",
        tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


def _tuning(name: str, positions: Sequence[str], head: bool) -> Experiment:
    """Each position at each drop probability of ``P_GRID``: the runs on which each position's
    best p is chosen by validation accuracy (never test accuracy)."""
    key = "head_dropout_at" if head else "dropout_at"
    configs = [Config("none", head_conv=head)]
    configs += [Config(f"{pos}-p{p:g}", p=p, head_conv=head, **{key: pos}) for pos in positions for p in P_GRID]
    return Experiment(name, f"drop probability {', '.join(f'{p:g}' for p in P_GRID)} at "
                            f"{', '.join(positions)}, chosen on the validation split (chapters 3-4)",
                      tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


def _regime() -> Experiment:
    """The pilot that chose the evidence regime (chapter 3): no-dropout networks of several
    training-set sizes, widths and with or without augmentation, scored on validation."""
    configs = []
    for n in (1000, 2000):
        for w in (8, 16):
            for aug in (False, True):
                configs.append(Config(f"n{n}-w{w}-{'aug' if aug else 'noaug'}", baseline="",
                                      changes=(("train_size", n), ("width", w), ("augment", aug))))
    configs.append(Config("n1000-w32-noaug", baseline="", changes=(("train_size", 1000), ("width", 32),
                                                                   ("augment", False))))
    configs += [Config(f"n1000-w16-noaug-e{e}", baseline="", changes=(("train_size", 1000), ("width", 16),
                                                                      ("augment", False), ("epochs", e)))
                for e in (25, 30)]
    return Experiment("regime", "pilot: train-set size, width and augmentation of the no-dropout "
                                "PreResNet-8, to find where it fits its training images and overfits",
                      tuple(configs), {"smoke": SMOKE, "class": PILOT, "paper": PAPER})


def _precision() -> Experiment:
    """bf16 autocast with channels_last against fp32 contiguous, paired by seed, for none, P0
    and P6 (issue 17): does the CPU fast path change what the networks learn?"""
    fp32, bf16 = (("precision", "fp32"), ("channels_last", False)), (("precision", "bf16"), ("channels_last", True))
    configs = []
    for pos in ("none", "P0", "P6"):
        at = None if pos == "none" else pos
        configs += [Config(f"{pos}-fp32", dropout_at=at, baseline="", changes=fp32),
                    Config(f"{pos}-bf16", dropout_at=at, baseline=f"{pos}-fp32", changes=bf16)]
    return Experiment("precision", "bf16 autocast + channels_last vs fp32 contiguous, paired by seed, "
                                   "for none, P0 and P6 (the CPU fast path)",
                      tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    _residual("residual", 20), _residual("residual-56", 56), _head(),
    _tuning("residual-p", ("P0", "P2", "P4", "P6", "P7"), head=False),
    _tuning("head-p", ("H4", "H5"), head=True), _regime(), _precision())}

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


_DATA_FIELDS = ("train_size", "val_size", "test_size")


def spec(experiment: str | Experiment, config: str | Config, scale: str, dataset: str | None = None
         ) -> dict[str, dict[str, Any]]:
    """Everything that decides one run besides its seed, as a JSON-ready dict: the network
    (``net``, a :class:`droplab.models.NetConfig`), the ``recipe`` and the ``data`` sizes.
    A record whose stored spec differs from this one is stale (:func:`check_records`)."""
    from droplab import data, models

    exp = get(experiment)
    cfg = config if isinstance(config, Config) else exp.config(config)
    ds = dataset or exp.dataset
    sizes = exp.sizes[_scale.validate(scale)]
    changes = dict(cfg.changes)
    net_fields = {f.name for f in fields(models.NetConfig)}
    recipe_fields = {f.name for f in fields(Recipe)}
    unknown = set(changes) - net_fields - recipe_fields - set(_DATA_FIELDS)
    if unknown:
        raise ValueError(f"config {cfg.name!r} changes unknown fields {sorted(unknown)}")
    info = data.info(ds)
    net = models.NetConfig(
        arch=cfg.arch, block=cfg.block, dropout_at=cfg.dropout_at, head_dropout_at=cfg.head_dropout_at,
        head_conv=cfg.head_conv, p=sizes.p if cfg.p is None else cfg.p, in_channels=info.shape[0],
        num_classes=info.num_classes, width=sizes.width,
        depth=sizes.bottleneck_depth if cfg.block == "bottleneck" else sizes.depth)
    net = replace(net, **{k: v for k, v in changes.items() if k in net_fields})
    recipe = replace(sizes.recipe, **AUGMENT.get(ds, {}))
    recipe = replace(recipe, **{k: v for k, v in changes.items() if k in recipe_fields})
    sizes_data = {k: getattr(sizes, k) for k in _DATA_FIELDS}
    sizes_data.update({k: v for k, v in changes.items() if k in _DATA_FIELDS})
    return {"net": asdict(net), "recipe": asdict(recipe), "data": {"dataset": ds, **sizes_data,
                                                                   "split_seed": SPLIT_SEED}}


def build_model(experiment: str | Experiment, config: str | Config, scale: str, dataset: str | None = None):
    """The network of ``config`` at ``scale`` (``models.build`` of its spec)."""
    from droplab import models

    return models.build(models.NetConfig(**spec(experiment, config, scale, dataset)["net"]))


def splits(dataset: str, train_size: int | None, val_size: int, test_size: int | None,
           split_seed: int = SPLIT_SEED) -> tuple[Any, Any, Any]:
    """The training, validation and test images of a run: the validation images are held
    out of the training split (:func:`droplab.data.holdout`), the test images are a
    class-balanced subset of the test split; the same for every config and seed."""
    from droplab import data

    full = data.load(dataset, "train")
    tr, va = data.holdout(full, train_size, val_size, seed=split_seed)
    te = data.load(dataset, "test")
    if test_size:
        te = data.subset(te, test_size, seed=split_seed)
    return tr, va, te


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
    """All complete records of a sweep, sorted by (seed, config order); partial files are skipped.

    For records a chapter relies on use :func:`check_records`, which also refuses
    missing, corrupt and stale ones."""
    exp = get(experiment)
    folder = record_dir(exp.name, _scale.validate(scale or _scale.current()), dataset or exp.dataset, results_dir)
    recs = [r for r in (read_record(p) for p in sorted(folder.glob("*.json"))) if r is not None]
    return _sorted(exp, recs)


def _sorted(exp: Experiment, recs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {n: i for i, n in enumerate(exp.config_names)}
    return sorted(recs, key=lambda r: (r["seed"], order.get(r["config"]["name"], len(order))))


class RecordsError(RuntimeError):
    """Committed run records that are missing, corrupt or stale; the message names them
    and the command that makes them."""


def stale_fields(stored: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The fields (``section.name``) in which a record's stored spec differs from ``expected``.

    A field the record lacks counts as its default value, so adding a field to
    the registry with its default does not make old records stale; any other
    difference does, and so does a field the registry no longer has."""
    from droplab import models

    defaults = {"net": asdict(models.NetConfig()), "recipe": asdict(Recipe()), "data": {}}
    out = []
    for section, want in expected.items():
        have = stored.get(section) if isinstance(stored, dict) else None
        if not isinstance(have, dict):
            out.append(section)
            continue
        for k, v in want.items():
            if have.get(k, defaults[section].get(k, object())) != v:
                out.append(f"{section}.{k}")
        out += [f"{section}.{k}" for k in have if k not in want]
    return out


def check_records(experiment: str | Experiment, scale: str, seeds: int | Iterable[int],
                  only: Sequence[str] | None = None, dataset: str | None = None,
                  results_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The records of every (config, seed) of the plan, or a :class:`RecordsError`.

    Refuses, by file name: a missing record, a partial or corrupt file, and a
    stale one (its spec differs from the registry's: :func:`stale_fields`), and
    says the command that makes them. Chapters build their tables from the
    committed records through this call, so a changed registry never mixes old
    and new runs silently. It reads the repository's ``data/results`` (the
    committed records) unless ``results_dir`` names another folder;
    ``DROPLAB_RESULTS``, where tests and readers' own sweeps write, is not read."""
    exp = get(experiment)
    sc = _scale.validate(scale)
    ds = dataset or exp.dataset
    folder = record_dir(exp.name, sc, ds, results_dir or REPO_RESULTS)
    runs = plan(exp, seeds, only)
    missing, corrupt, stale, records = [], [], [], []
    specs: dict[str, dict[str, Any]] = {}
    for r in runs:
        path = folder / f"{r.key}.json"
        if not path.exists():
            missing.append(path.name)
            continue
        rec = read_record(path)
        if rec is None:
            corrupt.append(path.name)
            continue
        if r.config not in specs:
            specs[r.config] = spec(exp, r.config, sc, ds)
        diff = stale_fields(rec.get("spec", {}), specs[r.config])
        if diff:
            stale.append(f"{path.name} ({', '.join(diff[:4])}{', ...' if len(diff) > 4 else ''})")
            continue
        records.append(rec)
    if missing or corrupt or stale:
        seeds_list = sorted({r.seed for r in runs})
        configs = sorted({r.config for r in runs}, key=exp.config_names.index)
        lines = [f"the records of {exp.name!r} ({sc} scale, {ds}) in {folder} are not whole:"]
        for what, names in (("missing", missing), ("partial or corrupt", corrupt),
                            ("stale (made with other settings than the registry's)", stale)):
            if names:
                lines.append(f"  {what}: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
        lines.append(f"make them with: python -m droplab.sweep run {exp.name} --scale {sc} "
                     f"--seeds {max(seeds_list) + 1} --only {','.join(configs)}"
                     + (f" --dataset {ds}" if ds != exp.dataset else ""))
        raise RecordsError("\n".join(lines))
    return records


# ----------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------

def run_one(experiment: str | Experiment, config: str | Config, seed: int, *, scale: str | None = None,
            dataset: str | None = None, results_dir: str | Path | None = None,
            device: str | None = None, path: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one (config, seed) and write its record; returns the record.

    ``path`` (a record's ``fast_path``: ``precision``, ``channels_last``) makes
    the run use that precision and memory format whatever the recipe's ``auto``
    would choose on this machine (:func:`reproduce` trains as the record did);
    the stored spec stays the registry's, the record's ``fast_path`` says what ran.

    After training, the network is evaluated (dropout off, one batched pass) on
    its un-augmented training images, the validation images and the test
    images: ``final_train_acc``, ``final_val_acc``, ``final_test_acc``."""
    import torch
    from droplab import models, repro, train

    exp = get(experiment)
    cfg = config if isinstance(config, Config) else exp.config(config)
    sc = _scale.validate(scale or _scale.current())
    ds = dataset or exp.dataset
    run_spec = spec(exp, cfg, sc, ds)
    d = run_spec["data"]
    tr, va, te = splits(ds, d["train_size"], d["val_size"], d["test_size"], d["split_seed"])
    dev = repro.device(device)
    repro.seed_everything(seed)
    model = models.build(models.NetConfig(**run_spec["net"]))
    t0 = time.perf_counter()
    recipe = Recipe(**run_spec["recipe"])
    if path is not None:
        recipe = replace(recipe, precision=path["precision"], channels_last=path["channels_last"])
    hist = train.fit(model, tr, None, recipe, seed=seed, device=dev, progress=False,
                     deterministic=sc != "paper")
    train_seconds = time.perf_counter() - t0
    finals: dict[str, float | None] = {}
    for name, split in (("train", tr), ("val", va), ("test", te)):
        loss, acc = (train.evaluate(model, split) if not hist.diverged and len(split.labels)
                     else (math.nan, math.nan))
        finals[f"final_{name}_acc"] = acc if math.isfinite(acc) else None
        finals[f"final_{name}_loss"] = loss if math.isfinite(loss) else None
    wall = time.perf_counter() - t0
    record = {
        "status": "complete", "experiment": exp.name, "scale": sc, "dataset": ds,
        "config": {**asdict(cfg), "changes": dict(cfg.changes)}, "seed": seed, "spec": run_spec,
        "num_parameters": models.num_parameters(model), "train_size": len(tr.labels),
        "val_size": len(va.labels), "test_size": len(te.labels), "history": hist.to_dict(), **finals,
        "fast_path": asdict(model.fast_path), "train_seconds": train_seconds, "wall_seconds": wall,
        "provenance": repro.provenance(dev),
    }
    write_atomic(record_dir(exp.name, sc, ds, results_dir) / f"{cfg.name}-seed{seed}.json", record)
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return record


def reproduce(experiment: str | Experiment, committed: dict[str, Any], results_dir: str | Path) -> dict[str, Any]:
    """Train the run of a ``committed`` record again (same experiment, config, seed and scale)
    into ``results_dir``, in the committed run's precision and memory format, and compare:
    ``again`` (the new record), ``same_machine`` (same device name, CPU vector instructions
    and torch version), ``tolerance`` (1e-6 there, where deterministic kernels
    must agree to rounding; 0.01 elsewhere, where kernels round differently) and ``gaps``,
    the absolute differences of the final train and test accuracy (chapters 3-4). It trains
    with one torch thread, as the sweep's workers do: another thread count sums in
    another order, and training amplifies the last-bit differences."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = run_one(experiment, committed["config"]["name"], committed["seed"], scale=committed["scale"],
                        dataset=committed["dataset"], results_dir=results_dir, path=committed.get("fast_path"))
    finally:
        torch.set_num_threads(threads)
    same = all(again["provenance"].get(k) == committed["provenance"].get(k)
               for k in ("device_name", "cpu_capability", "torch"))
    gaps = {k: abs(again[k] - committed[k]) for k in ("final_train_acc", "final_test_acc")}
    return {"again": again, "same_machine": same, "tolerance": 1e-6 if same else 0.01, "gaps": gaps}


def _todo(exp: Experiment, sc: str, ds: str, runs: Sequence[Run], folder: Path) -> tuple[list[Run], int]:
    """The runs without a complete, current record (stale ones are redone), and how many were stale."""
    todo, stale, specs = [], 0, {}
    for r in runs:
        rec = read_record(folder / f"{r.key}.json")
        if rec is not None:
            if r.config not in specs:
                specs[r.config] = spec(exp, r.config, sc, ds)
            if not stale_fields(rec.get("spec", {}), specs[r.config]):
                continue
            stale += 1
        todo.append(r)
    return todo, stale


def _worker_init() -> None:
    """A sweep worker: one torch thread, and it dies with the process that started it."""
    import torch

    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
        except OSError:
            pass


Job = tuple["Experiment", str, int, str, str, "str | None", "str | None", "float | None", "dict | None"]


def _work(job: Job) -> tuple[str, str | None]:
    """Run one job; returns (key, None), (key, "skipped") past the deadline, or (key, the error)."""
    exp, config, seed, sc, ds, results_dir, device, deadline, path = job
    key = f"{config}-seed{seed}"
    if deadline is not None and time.time() > deadline:
        return key, "skipped"
    try:
        for left in record_dir(exp.name, sc, ds, results_dir).glob(f".{key}.json.*.tmp"):
            left.unlink(missing_ok=True)                   # left by a killed run of this key
        run_one(exp, config, seed, scale=sc, dataset=ds, results_dir=results_dir, device=device, path=path)
        return key, None
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the others; it is reported
        return key, f"{type(exc).__name__}: {exc}"


def run(experiment: str | Experiment, scale: str | None = None, seeds: int | Iterable[int] = 1, *,
        only: Sequence[str] | None = None, dataset: str | None = None, results_dir: str | Path | None = None,
        shard: str | tuple[int, int] | None = None, device: str | None = None,
        progress: bool = True, workers: int = 1, time_limit: float | None = None,
        precision: str | None = None) -> list[dict[str, Any]]:
    """Run the sweep (or its shard) and return the records of its runs, old and new.

    Complete, current records are reused; missing, partial, corrupt or stale
    ones are (re)done. ``seeds`` is a count (seeds 0..N-1) or a list; ``only``
    a subset of configs. ``workers`` > 1 trains that many runs at once, each in
    a process of its own with one torch thread (they die with this process);
    one progress bar counts the whole sweep. After ``time_limit`` seconds no
    new run starts (runs already started finish), so only complete records are
    left; the runs not started are left out of the returned list. ``precision``
    ("fp32" or "bf16", contiguous or channels_last memory as with it) overrides
    the recipe's ``auto`` for the new runs (:func:`run_one`'s ``path``), so that
    one sweep spread over machines with and without native bf16 stays in one
    precision; each record's ``fast_path`` says what ran.
    """
    from tqdm.auto import tqdm

    exp = get(experiment)
    sc = _scale.validate(scale or _scale.current())
    ds = dataset or exp.dataset
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if precision not in (None, "fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16 (or None: the recipe's), got {precision!r}")
    path = None if precision is None else {"precision": precision, "channels_last": precision == "bf16"}
    folder = record_dir(exp.name, sc, ds, results_dir)
    runs = plan(exp, seeds, only, shard)
    todo, stale = _todo(exp, sc, ds, runs, folder)
    deadline = time.time() + time_limit if time_limit is not None else None
    quiet = not progress or _scale.current() == "smoke"
    if stale and not quiet:
        print(f"redoing {stale} stale record(s) of {exp.name} (made with other settings)", file=sys.stderr)
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=f"{exp.name} ({sc}, {ds})", unit="run",
               disable=quiet)
    jobs: list[Job] = [(exp, r.config, r.seed, sc, ds, None if results_dir is None else str(results_dir),
                        device, deadline, path) for r in todo]
    failed: dict[str, str] = {}
    skipped: list[str] = []
    if workers == 1 or len(jobs) <= 1:
        results: Iterable[tuple[str, str | None]] = map(_work, jobs)
        pool = None
    else:
        import multiprocessing as mp

        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"          # inherited by the spawned workers
        try:
            pool = mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_worker_init)
        finally:
            os.environ.pop("OMP_NUM_THREADS") if saved is None else os.environ.update(OMP_NUM_THREADS=saved)
        results = pool.imap_unordered(_work, jobs)
    try:
        for key, err in results:
            if err == "skipped":
                skipped.append(key)
            elif err is not None:
                failed[key] = err
            bar.update(1)
            bar.set_postfix_str(key)
        if pool is not None:
            pool.close()
    finally:
        if pool is not None:
            pool.terminate()          # after close(): the workers have finished; else: stop them now
            pool.join()
        bar.close()
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) of {exp.name} failed:\n" +
                           "\n".join(f"  {k}: {v}" for k, v in failed.items()))
    if skipped and not quiet:
        print(f"time limit: {len(skipped)} run(s) not started ({', '.join(skipped[:8])}"
              f"{' ...' if len(skipped) > 8 else ''}); run the same command again to do them", file=sys.stderr)
    keys = {r.key for r in runs} - set(skipped)
    return _sorted(exp, (rec for rec in (read_record(folder / f"{k}.json") for k in keys) if rec is not None))


# ----------------------------------------------------------------------------
# Tables: mean +- 95% confidence interval over seeds, paired differences, power
# ----------------------------------------------------------------------------

@dataclass
class Row:
    """One config of a table: ``n`` runs, ``mean`` ± ``ci95`` of the metric, and against
    its baseline the paired difference ``diff`` ± ``diff_ci95`` over the ``n_paired``
    seeds both have, with the smallest difference those seeds could detect (``mde``,
    80 % power)."""

    config: str
    n: int
    mean: float
    ci95: float
    baseline: str
    diff: float
    diverged: int = 0
    diff_ci95: float = math.nan
    mde: float = math.nan
    n_paired: int = 0


def table(records: Sequence[dict[str, Any]], metric: str = METRIC) -> list[Row]:
    """One row per config: n runs, mean and 95 % CI of ``metric``, and the paired
    difference from the config's baseline (``Config.baseline``) with its 95 % CI and
    smallest detectable difference. Diverged runs are counted in ``diverged`` and
    left out."""
    by: dict[str, dict[int, float]] = {}
    diverged: dict[str, int] = {}
    baselines: dict[str, str] = {}
    for r in records:
        name = r["config"]["name"]
        baselines[name] = r["config"].get("baseline", "none")
        v = r.get(metric)
        by.setdefault(name, {})
        if v is None or not math.isfinite(v) or r["history"].get("diverged"):
            diverged[name] = diverged.get(name, 0) + 1
        else:
            by[name][int(r["seed"])] = float(v)
    rows = []
    for name, vals in by.items():
        mean, ci = metrics.mean_ci95(list(vals.values()))
        base = baselines[name]
        row = Row(name, len(vals), mean, ci, base, math.nan, diverged.get(name, 0))
        if base in by:
            shared = sorted(set(vals) & set(by[base]))
            diffs = [vals[s] - by[base][s] for s in shared]
            if diffs:
                row.diff, row.diff_ci95 = metrics.mean_ci95(diffs)
                row.mde, row.n_paired = metrics.minimum_detectable_effect(diffs), len(diffs)
        rows.append(row)
    return rows


def tuned_p(records: Sequence[dict[str, Any]], metric: str = "final_val_acc") -> dict[str, float]:
    """Each position's drop probability with the best mean ``metric`` (validation accuracy:
    never the test split) over the records of a tuning experiment (``residual-p``,
    ``head-p``: configs named ``<position>-p<p>``); ties go to the smaller p."""
    by: dict[str, dict[float, list[float]]] = {}
    for r in records:
        cfg = r["config"]
        pos = cfg.get("dropout_at") or cfg.get("head_dropout_at")
        v = r.get(metric)
        if pos is None or cfg.get("p") is None or v is None:
            continue
        by.setdefault(pos, {}).setdefault(float(cfg["p"]), []).append(float(v))
    return {pos: min(ps, key=lambda q: (-sum(ps[q]) / len(ps[q]), q)) for pos, ps in by.items()}


def format_table(rows: Sequence[Row], percent: bool = True) -> str:
    """A plain-text table; accuracy in percent, 'n/a (n=1)' where one seed gives no CI."""
    k = 100.0 if percent else 1.0
    lines = [f"{'config':<18} {'n':>3} {'mean':>8} {'95% CI':>13} {'paired diff':>16} {'MDE':>6}  baseline"]
    for r in rows:
        ci = f"± {k * r.ci95:.2f}" if math.isfinite(r.ci95) else f"n/a (n={r.n})"
        if r.config == r.baseline or not r.baseline:
            diff, mde = "", ""
        else:
            diff = (f"{k * r.diff:+.2f}" if math.isfinite(r.diff) else "n/a") + (
                f" ± {k * r.diff_ci95:.2f}" if math.isfinite(r.diff_ci95) else "")
            mde = f"{k * r.mde:.2f}" if math.isfinite(r.mde) else ""
        note = f"  ({r.diverged} diverged)" if r.diverged else ""
        lines.append(f"{r.config:<18} {r.n:>3} {k * r.mean:>8.2f} {ci:>13} {diff:>16} {mde:>6}  {r.baseline}{note}")
    return "\n".join(lines)


def table_frame(rows: Sequence[Row], percent: bool = True, quoted: dict[str, str] | None = None):  # noqa: ANN201
    """The rows of :func:`table` as a pandas DataFrame for the book's HTML tables: mean ± 95 % CI,
    paired difference ± 95 % CI and the smallest detectable difference, in percent points.
    ``quoted`` adds a column of text quoted from a paper, by config name."""
    import pandas as pd

    k = 100.0 if percent else 1.0
    out = []
    for r in rows:
        row = {"config": r.config, "seeds": r.n, "accuracy (%)": metrics.pm(r.mean, r.ci95, k)}
        is_base = r.config == r.baseline or not r.baseline
        row["difference (points)"] = "baseline" if is_base else metrics.pm(r.diff, r.diff_ci95, k, signed=True)
        row["smallest detectable (points)"] = "" if is_base or not math.isfinite(r.mde) else f"{k * r.mde:.2f}"
        if quoted is not None:
            row["Kim et al. (quoted)"] = quoted.get(r.config, "")
        if r.diverged:
            row["seeds"] = f"{r.n} ({r.diverged} diverged)"
        out.append(row)
    return pd.DataFrame(out)


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "n", "mean", "ci95", "baseline", "diff", "diff_ci95", "mde", "n_paired", "diverged"])
        for r in rows:
            w.writerow([r.config, r.n, r.mean, r.ci95, r.baseline, r.diff, r.diff_ci95, r.mde, r.n_paired,
                        r.diverged])
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
            p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                           help="runs trained at once, one process and one torch thread each (default: the cores)")
            p.add_argument("--time-limit", type=float, default=None,
                           help="seconds after which no new run starts (runs started finish)")
            p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                           help="train in this precision whatever the CPU (default: the recipe's auto)")
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
            t0 = time.perf_counter()
            recs = run(exp, sc, args.seeds, only=only, dataset=ds, results_dir=args.results,
                       shard=args.shard, device=args.device, workers=args.workers, time_limit=args.time_limit,
                       precision=args.precision)
            print(f"{len(recs)} runs complete in {record_dir(exp.name, sc, ds, args.results)} "
                  f"({time.perf_counter() - t0:.0f} s, {args.workers} worker(s))")
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
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
