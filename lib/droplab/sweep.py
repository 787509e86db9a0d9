"""The resumable, shardable sweep runner: train every (config, seed) of an experiment
(:mod:`droplab.experiments`) and write one record per run (:mod:`droplab.records`).

From Python::

    recs = sweep.run("residual", scale="smoke", seeds=1, only=["none", "P6"])   # train (or reuse)

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
machines share a sweep without talking to each other.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from droplab import scale as _scale
from droplab.experiments import EXPERIMENTS, Config, Experiment, Run, get, plan, spec, splits
from droplab.records import (format_table, load_records, read_record, record_dir, sorted_records, stale_fields,
                             table, write_atomic, write_csv)
from droplab.train import Recipe


# ----------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------

@dataclass
class Trained:
    """One trained run, in memory: the network, its :class:`droplab.train.History`, the
    training, validation and test images it used and the spec that decided it."""

    model: Any
    history: Any
    train: Any
    val: Any
    test: Any
    spec: dict[str, Any]
    scale: str
    dataset: str
    train_seconds: float


def train_one(experiment: str | Experiment, config: str | Config, seed: int, *, scale: str | None = None,
              dataset: str | None = None, device: str | None = None, path: dict[str, Any] | None = None
              ) -> Trained:
    """Train one (config, seed) exactly as its record is made, and return it (:class:`Trained`)
    instead of writing a record: a chapter that probes a trained network of an experiment
    trains it with the registry's spec, not a copy of it. ``path`` as in :func:`run_one`."""
    from droplab import models, repro, train

    exp = get(experiment)
    cfg = config if isinstance(config, Config) else exp.config(config)
    sc = _scale.warn_if_slow(_scale.validate(scale or _scale.current()))
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
    return Trained(model, hist, tr, va, te, run_spec, sc, ds, time.perf_counter() - t0)


def run_one(experiment: str | Experiment, config: str | Config, seed: int, *, scale: str | None = None,
            dataset: str | None = None, results_dir: str | Path | None = None,
            device: str | None = None, path: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one (config, seed) (:func:`train_one`) and write its record; returns the record.

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
    run = train_one(exp, cfg, seed, scale=scale, dataset=dataset, device=device, path=path)
    model, hist, tr, va, te = run.model, run.history, run.train, run.val, run.test
    t0 = time.perf_counter()
    finals: dict[str, float | None] = {}
    for name, split in (("train", tr), ("val", va), ("test", te)):
        loss, acc = (train.evaluate(model, split) if not hist.diverged and len(split.labels)
                     else (math.nan, math.nan))
        finals[f"final_{name}_acc"] = acc if math.isfinite(acc) else None
        finals[f"final_{name}_loss"] = loss if math.isfinite(loss) else None
    wall = run.train_seconds + time.perf_counter() - t0      # training and evaluation, not data loading
    dev = next(model.parameters()).device
    record = {
        "status": "complete", "experiment": exp.name, "scale": run.scale, "dataset": run.dataset,
        "config": {**asdict(cfg), "changes": dict(cfg.changes)}, "seed": seed, "spec": run.spec,
        "num_parameters": models.num_parameters(model), "train_size": len(tr.labels),
        "val_size": len(va.labels), "test_size": len(te.labels), "history": hist.to_dict(), **finals,
        "fast_path": asdict(model.fast_path), "train_seconds": run.train_seconds, "wall_seconds": wall,
        "provenance": repro.provenance(dev),
    }
    write_atomic(record_dir(exp.name, run.scale, run.dataset, results_dir) / f"{cfg.name}-seed{seed}.json", record)
    del model, run
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


def reproduction_check(experiment: str | Experiment, committed: dict[str, Any], rehearse: Sequence[str],
                       results_dir: str | Path) -> dict[str, Any]:
    """Chapters 3-4's live check of a committed record. At the record's own scale it trains the
    run again (:func:`reproduce`) and ``ok`` says the gaps are within the tolerance; at any other
    scale it trains each config of ``rehearse`` once (seed 0, the scale in force, the record's data
    set) through the same code path, which shows the pipeline works and reproduces nothing, and
    ``ok`` says each of them made a complete record. ``summary`` is the sentence a chapter prints."""
    sc = _scale.current()
    if sc == committed["scale"]:
        check = reproduce(experiment, committed, results_dir)
        check["ok"] = max(check["gaps"].values()) <= check["tolerance"]
        check["summary"] = (
            f"{committed['config']['name']}, seed {committed['seed']}: committed "
            f"{100 * committed['final_test_acc']:.2f} %, again {100 * check['again']['final_test_acc']:.2f} % "
            f"({'same' if check['same_machine'] else 'another'} machine type, tolerance {100 * check['tolerance']:g} points)")
        return check
    live = run(experiment, scale=sc, seeds=1, only=list(rehearse), dataset=committed["dataset"], results_dir=results_dir)
    ok = ([r["config"]["name"] for r in live] == list(rehearse)
          and all(r["final_train_acc"] is not None and r["final_test_acc"] is not None for r in live))
    summary = (f"{sc} scale: {len(live)} runs through the same code path, test accuracy "
               + ", ".join(f"{r['config']['name']} {100 * r['final_test_acc']:.1f} %" for r in live))
    return {"live": live, "ok": ok, "summary": summary}


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
            pool.close()              # every run is done: let the workers exit on their own
            pool.join()
            pool = None
    finally:
        if pool is not None:          # interrupted (an error, Ctrl-C): stop the workers now
            pool.terminate()
            pool.join()
        bar.close()
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) of {exp.name} failed:\n" +
                           "\n".join(f"  {k}: {v}" for k, v in failed.items()))
    if skipped and not quiet:
        print(f"time limit: {len(skipped)} run(s) not started ({', '.join(skipped[:8])}"
              f"{' ...' if len(skipped) > 8 else ''}); run the same command again to do them", file=sys.stderr)
    keys = {r.key for r in runs} - set(skipped)
    return sorted_records(exp, (rec for rec in (read_record(folder / f"{k}.json") for k in keys) if rec is not None))


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
