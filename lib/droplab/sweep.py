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
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from droplab import compare
from droplab import scale as _scale
from droplab.experiments import EXPERIMENTS, Config, Experiment, Run, configs_named, get, plan, train_one
from droplab.records import FORMAT, inventory_table, load_whole, read_record, record_dir, sorted_records, write_atomic

# ----------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------

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
    folder = record_dir(exp.name, _scale.validate(scale or _scale.current()), dataset or exp.dataset, results_dir)
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
        "format": FORMAT, "status": "complete", "experiment": exp.name, "scale": run.scale, "dataset": run.dataset,
        "config": cfg.to_dict(), "seed": seed, "spec": run.spec.to_dict(),
        "num_parameters": models.num_parameters(model), "train_size": len(tr.labels),
        "val_size": len(va.labels), "test_size": len(te.labels), "history": hist.to_dict(), **finals,
        "fast_path": asdict(model.fast_path), "train_seconds": run.train_seconds, "wall_seconds": wall,
        "provenance": repro.provenance(dev),
    }
    write_atomic(folder / f"{cfg.name}-seed{seed}.json", record)
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
    """The runs without a record that passes the checks (:func:`droplab.records.read_record`), and
    how many of those had a file (partial, corrupt, stale: each is redone)."""
    todo = [r for r in runs if read_record(folder / f"{r.key}.json", exp, sc, ds) is None]
    return todo, sum((folder / f"{r.key}.json").exists() for r in todo)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_dead_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files (``.<record>.<pid>.tmp``) that a killed run left in ``folder``;
    a file whose process is still alive is left alone."""
    gone = []
    for tmp in folder.glob(".*.json.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


class SweepLocked(RuntimeError):
    """Another sweep is writing into the same results folder."""


def folder_lock(folder: Path, wait: float = 0.0) -> Any:
    """The lock of one results folder (``.sweep.lock`` beside the records): one sweep writes into a
    folder at a time. ``wait`` seconds to wait for it (0: refuse at once), then
    :class:`SweepLocked` names the sweep that holds it."""
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / ".sweep.lock")
    holder = folder / ".sweep.lock.who"

    class _Held:
        def __enter__(self) -> None:
            try:
                lock.acquire(timeout=wait)
            except Timeout:
                who = holder.read_text().strip() if holder.exists() else "another sweep"
                raise SweepLocked(f"{folder} is being written by {who}; wait for it to finish, or run this "
                                  f"sweep with another --results folder") from None
            holder.write_text(f"process {os.getpid()} ({' '.join(sys.argv[:3]) or 'python'}), since "
                              f"{time.strftime('%Y-%m-%d %H:%M:%S')}")

        def __exit__(self, *exc: object) -> None:
            holder.unlink(missing_ok=True)
            lock.release()

    return _Held()


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
        run_one(exp, config, seed, scale=sc, dataset=ds, results_dir=results_dir, device=device, path=path)
        return key, None
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the others; it is reported
        return key, f"{type(exc).__name__}: {exc}"


def _pool(workers: int) -> Any:
    """``workers`` spawned processes, one torch thread each (they die with this process)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"          # inherited by the spawned workers
    try:
        return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    finally:
        os.environ.pop("OMP_NUM_THREADS") if saved is None else os.environ.update(OMP_NUM_THREADS=saved)


def _results(jobs: list[Job], workers: int) -> Iterable[tuple[str, str | None]]:
    """Each job's (key, outcome) as it finishes. A worker that dies (killed, out of memory, a
    crash) breaks the pool: its run and every run not yet finished come back as failed, so the
    sweep ends, and a rerun of the same command does them."""
    if workers == 1 or len(jobs) <= 1:
        yield from map(_work, jobs)
        return
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    pool = _pool(min(workers, len(jobs)))
    futures = {pool.submit(_work, job): f"{job[1]}-seed{job[2]}" for job in jobs}
    finished = False
    try:
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except BrokenProcessPool:
                yield futures[fut], ("a worker process died (killed, out of memory or crashed) before this run "
                                     "was recorded")
        finished = True
    finally:
        if not finished:                      # interrupted (an error, Ctrl-C): stop the runs now
            for proc in list((pool._processes or {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def run(experiment: str | Experiment, scale: str | None = None, seeds: int | Iterable[int] = 1, *,
        only: Sequence[str] | None = None, dataset: str | None = None, results_dir: str | Path | None = None,
        shard: str | tuple[int, int] | None = None, device: str | None = None,
        progress: bool = True, workers: int = 1, time_limit: float | None = None,
        precision: str | None = None, wait: float = 0.0) -> list[dict[str, Any]]:
    """Run the sweep (or its shard) and return the records of its runs, old and new.

    Records that pass the checks are reused; missing, partial, corrupt or stale
    ones are (re)done. ``seeds`` is a count (the experiment's first seeds) or a
    list; ``only`` a subset of configs (repeats ignored). ``workers`` > 1 trains
    that many runs at once, each in a process of its own with one torch thread
    (they die with this process); one progress bar counts the whole sweep. A
    worker that dies ends the sweep with its unrecorded runs reported as failed
    (a rerun does them). One sweep writes into a results folder at a time: a
    second one waits ``wait`` seconds, then refuses, naming the first. After
    ``time_limit`` seconds no new run starts (runs already started finish), so
    only complete records are left; the runs not started are left out of the
    returned list. ``precision`` ("fp32" or "bf16", contiguous or channels_last
    memory as with it) overrides the recipe's ``auto`` for the new runs
    (:func:`run_one`'s ``path``), so that one sweep spread over machines with and
    without native bf16 stays in one precision; each record's ``fast_path`` says
    what ran.
    """
    from tqdm.auto import tqdm

    exp = get(experiment)
    sc = _scale.validate(scale or _scale.current())
    ds = dataset or exp.dataset
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int of at least 1, got {workers!r}")
    if precision not in (None, "fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16 (or None: the recipe's), got {precision!r}")
    path = None if precision is None else {"precision": precision, "channels_last": precision == "bf16"}
    folder = record_dir(exp.name, sc, ds, results_dir)
    runs = plan(exp, seeds, only, shard)
    quiet = not progress or sc == "smoke"
    failed: dict[str, str] = {}
    skipped: list[str] = []
    with folder_lock(folder, wait):
        remove_dead_temporaries(folder)
        todo, redo = _todo(exp, sc, ds, runs, folder)
        if redo and not quiet:
            print(f"redoing {redo} record(s) of {exp.name} that are partial, corrupt or stale", file=sys.stderr)
        deadline = time.time() + time_limit if time_limit is not None else None
        jobs: list[Job] = [(exp, r.config, r.seed, sc, ds, None if results_dir is None else str(results_dir),
                            device, deadline, path) for r in todo]
        with tqdm(total=len(runs), initial=len(runs) - len(todo), desc=f"{exp.name} ({sc}, {ds})", unit="run",
                  disable=quiet) as bar:
            for key, err in _results(jobs, workers):
                if err == "skipped":
                    skipped.append(key)
                elif err is not None:
                    failed[key] = err
                bar.update(1)
                bar.set_postfix_str(key)
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) of {exp.name} failed (run the same command again to redo them):\n"
                           + "\n".join(f"  {k}: {v}" for k, v in failed.items()))
    if skipped and not quiet:
        print(f"time limit: {len(skipped)} run(s) not started ({', '.join(skipped[:8])}"
              f"{' ...' if len(skipped) > 8 else ''}); run the same command again to do them", file=sys.stderr)
    keys = {r.key for r in runs} - set(skipped)
    return sorted_records(exp, (rec for rec in (read_record(folder / f"{k}.json", exp, sc, ds) for k in keys)
                                if rec is not None))


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def _only(text: str | None, exp: Experiment) -> list[str] | None:
    """``--only a,b,c`` as a list of config names without repeats; an empty list is refused."""
    if text is None:
        return None
    return configs_named(exp, [s.strip() for s in text.split(",") if s.strip()])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m droplab.sweep", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments and their configs")
    sub.add_parser("inventory", help="the committed records, one row per folder, as a Markdown table")
    for name in ("run", "table"):
        p = sub.add_parser(name, help=f"{name} an experiment")
        p.add_argument("experiment")
        p.add_argument("--scale", default=None, help=f"one of {', '.join(_scale.SCALES)} (default: DROPLAB_SCALE)")
        p.add_argument("--dataset", default=None, help="fashion-mnist (default), cifar10, cifar100, synthetic")
        p.add_argument("--results", default=None,
                       help="results folder (default: DROPLAB_RESULTS, or in a checkout the committed records)")
        if name == "table":
            p.add_argument("--csv", default=None, help="also write the table to this CSV file")
        if name == "run":
            p.add_argument("--seeds", type=int, default=1, help="number of seeds (the experiment's first N)")
            p.add_argument("--shard", default=None, help="i/n: run every n-th run starting at i")
            p.add_argument("--only", default=None, help="comma-separated configs, e.g. none,P0,P6")
            p.add_argument("--device", default=None, help="cuda, cpu, ... (default: droplab.repro.device())")
            p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                           help="runs trained at once, one process and one torch thread each (default: the cores)")
            p.add_argument("--time-limit", type=float, default=None,
                           help="seconds after which no new run starts (runs started finish)")
            p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                           help="train in this precision whatever the CPU (default: the recipe's auto)")
            p.add_argument("--wait", type=float, default=0.0,
                           help="seconds to wait for another sweep writing into the same folder (default: refuse)")
    args = ap.parse_args(argv)
    try:
        if args.command == "list":
            for e in EXPERIMENTS.values():
                print(f"{e.name}: {e.description}\n  configs: {', '.join(e.config_names)}")
            return 0
        if args.command == "inventory":
            print(inventory_table())
            return 0
        exp = get(args.experiment)
        sc = _scale.validate(args.scale or _scale.current())
        ds = args.dataset or exp.dataset
        if args.dataset is not None and args.dataset not in _known_datasets():
            raise ValueError(f"unknown data set {args.dataset!r}; valid names are {', '.join(_known_datasets())}")
        if args.command == "run":
            t0 = time.perf_counter()
            recs = run(exp, sc, args.seeds, only=_only(args.only, exp), dataset=ds, results_dir=args.results,
                       shard=args.shard, device=args.device, workers=args.workers, time_limit=args.time_limit,
                       precision=args.precision, wait=args.wait)
            print(f"{len(recs)} runs complete in {record_dir(exp.name, sc, ds, args.results)} "
                  f"({time.perf_counter() - t0:.0f} s, {args.workers} worker(s))")
            return 0
        folder = record_dir(exp.name, sc, ds, args.results)
        recs = load_whole(exp, sc, ds, folder.parents[2])
        if not recs:
            print(f"no records in {folder}; make them with: python -m droplab.sweep run {exp.name} --scale {sc}",
                  file=sys.stderr)
            return 1
        print(compare.text_table(recs))
        if args.csv is not None:
            print(f"written {compare.write_csv(compare.against_baselines(recs), args.csv)}")
        return 0
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _known_datasets() -> list[str]:
    from droplab.data import DATASETS

    return list(DATASETS)


if __name__ == "__main__":
    sys.exit(main())
