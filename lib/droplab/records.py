"""Run records: one JSON file per (config, seed), written atomically, read back only
through one checked loader::

    <results>/<experiment>/<scale>/<dataset>/<config>-seed<k>.json

A record holds the format version, the run's config and spec
(:class:`droplab.experiments.RunSpec`), its history, the fast path used, the
provenance and, measured after training with dropout off, the accuracy and loss
on the un-augmented training images, the validation images and the test images.

Every reader (the chapters, ``sweep table``, the paper-scale report, a resumed
sweep) goes through :func:`check_record`: a record that is partial, corrupt, of
an unknown format, made with other settings than the registry's (its spec, its
config, its baseline), or whose values are of the wrong type or out of range, is
refused by file name, with the reason::

    recs = records.check_records("residual", "class", seeds=5)   # whole and current, or a RecordsError

The committed records travel with the package (``droplab/results``, read by
:func:`check_records`); a sweep writes to ``--results``, ``DROPLAB_RESULTS``,
or, in a checkout of the book, the committed folder (never into an installed package).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from droplab import scale as _scale
from droplab.experiments import Experiment, Run, get, plan, spec

FORMAT = 2          # 1: the config as the registry's fields then; 2: name, baseline and overrides
COMMITTED = Path(__file__).resolve().parent / "results"      # the committed records (package data)
CHECKOUT = Path(__file__).resolve().parents[2]
SPLIT_NAMES = ("train", "val", "test")


# ----------------------------------------------------------------------------
# Where records live
# ----------------------------------------------------------------------------

def in_checkout() -> bool:
    """Whether droplab runs from a checkout of the book (an editable install), not a wheel."""
    return (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "lib" / "droplab").is_dir()


def results_root(results_dir: str | Path | None = None) -> Path:
    """Where a sweep writes: ``results_dir``, else ``DROPLAB_RESULTS``, else (in a checkout) the
    committed folder; an installed package is never written into."""
    if results_dir or os.environ.get("DROPLAB_RESULTS"):
        return Path(results_dir or os.environ["DROPLAB_RESULTS"]).expanduser()
    if in_checkout():
        return COMMITTED
    raise ValueError("droplab is installed as a package, whose committed records are read-only: say where "
                     "new records go with --results FOLDER (Python: results_dir=...) or DROPLAB_RESULTS=FOLDER")


def record_dir(experiment: str, scale: str, dataset: str, results_dir: str | Path | None = None) -> Path:
    return results_root(results_dir) / experiment / scale / dataset


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


# ----------------------------------------------------------------------------
# Checking one record
# ----------------------------------------------------------------------------

class RecordError(ValueError):
    """One record refused: the message names its file and says what is wrong with it."""

    def __init__(self, path: Path, reason: str, kind: str = "corrupt") -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.kind = path, reason, kind     # kind: corrupt, stale or format


class RecordsError(RuntimeError):
    """A set of records that is not whole: missing, corrupt, stale or of an unknown format.
    The message names each file and gives the command that makes them again."""


_TOP = {"format", "status", "experiment", "scale", "dataset", "config", "seed", "spec", "num_parameters",
        "train_size", "val_size", "test_size", "history", "fast_path", "train_seconds", "wall_seconds",
        "provenance"} | {f"final_{s}_{m}" for s in SPLIT_NAMES for m in ("acc", "loss")}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _problem(rec: Any, path: Path, exp: Experiment, scale: str, dataset: str) -> tuple[str, str] | None:
    """What is wrong with ``rec`` read from ``path``, as (kind, reason), or None."""
    if not isinstance(rec, dict):
        return "corrupt", f"not a record (a JSON {type(rec).__name__}, not an object)"
    fmt = rec.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        return "corrupt", f"format {fmt!r} is not a format version"
    if fmt > FORMAT:
        return "format", f"format {fmt} is newer than this droplab reads (up to {FORMAT}): update droplab"
    if rec.get("status") != "complete":
        return "corrupt", f"status {rec.get('status')!r}: the run did not finish"
    unknown = set(rec) - _TOP
    if unknown:
        return "corrupt", f"unknown field(s) {sorted(unknown)}"
    for key, want in (("experiment", exp.name), ("scale", scale), ("dataset", dataset)):
        if rec.get(key) != want:
            return "corrupt", f"{key} is {rec.get(key)!r}, but the file sits in the folder of {want!r}"
    cfg, seed = rec.get("config"), rec.get("seed")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str):
        return "corrupt", "its config is not an object with a name"
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        return "corrupt", f"seed {seed!r} is not a non-negative int"
    if path.name != f"{cfg['name']}-seed{seed}.json":
        return "corrupt", f"it is the record of {cfg['name']}-seed{seed}, not of its file name"
    try:
        registered = exp.config(cfg["name"])
    except ValueError:
        return "stale", f"the registry of {exp.name!r} has no config {cfg['name']!r}"
    if cfg.get("baseline", "none") != registered.baseline:
        return "stale", f"baseline {cfg.get('baseline')!r}, the registry says {registered.baseline!r}"
    if fmt >= 2 and json.loads(json.dumps(registered.to_dict())) != cfg:
        return "stale", "its config differs from the registry's"
    diff = spec(exp, registered, scale, dataset, seed=seed).stale_fields(rec.get("spec"))
    if diff:
        return "stale", f"made with other settings than the registry's ({', '.join(diff[:4])}{', ...' if len(diff) > 4 else ''})"
    hist = rec.get("history")
    if not isinstance(hist, dict) or not isinstance(hist.get("diverged", False), bool):
        return "corrupt", "its history is not an object with a true/false 'diverged'"
    for split in SPLIT_NAMES:
        acc, loss, n = rec.get(f"final_{split}_acc"), rec.get(f"final_{split}_loss"), rec.get(f"{split}_size")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return "corrupt", f"{split}_size {n!r} is not a count"
        if acc is None and loss is None and (hist.get("diverged") or n == 0):
            continue                                   # a diverged run, or a split the run did not have
        if not (_finite(acc) and 0.0 <= acc <= 1.0):
            return "corrupt", f"final_{split}_acc {acc!r} is not an accuracy in [0, 1]"
        if not (_finite(loss) and loss >= 0.0):
            return "corrupt", f"final_{split}_loss {loss!r} is not a finite loss"
    for key in ("train_seconds", "wall_seconds"):
        if not (_finite(rec.get(key)) and rec[key] >= 0):
            return "corrupt", f"{key} {rec.get(key)!r} is not a duration"
    prov = rec.get("provenance")
    if not isinstance(prov, dict) or not all(isinstance(prov.get(k), str) for k in ("device_name", "torch")):
        return "corrupt", "its provenance does not name the device and torch"
    if not isinstance(rec.get("fast_path"), dict):
        return "corrupt", "its fast_path is not an object"
    return None


def check_record(path: Path, experiment: str | Experiment, scale: str, dataset: str) -> dict[str, Any]:
    """The record at ``path``, checked; a :class:`RecordError` names the file and the reason."""
    exp = get(experiment)
    try:
        rec = json.loads(Path(path).read_text())
    except OSError as exc:
        raise RecordError(Path(path), f"cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise RecordError(Path(path), f"is not JSON (truncated or corrupt: {exc})") from None
    problem = _problem(rec, Path(path), exp, scale, dataset)
    if problem is not None:
        raise RecordError(Path(path), problem[1], problem[0])
    return rec


def read_record(path: Path, experiment: str | Experiment, scale: str, dataset: str) -> dict[str, Any] | None:
    """The record at ``path`` if it passes :func:`check_record`, else None (a sweep redoes it)."""
    try:
        return check_record(path, experiment, scale, dataset)
    except RecordError:
        return None


# ----------------------------------------------------------------------------
# The checked loader
# ----------------------------------------------------------------------------

def sorted_records(exp: Experiment, recs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {n: i for i, n in enumerate(exp.config_names)}
    return sorted(recs, key=lambda r: (r["seed"], order.get(r["config"]["name"], len(order))))


def check_records(experiment: str | Experiment, scale: str, seeds: int | Iterable[int],
                  only: Sequence[str] | None = None, dataset: str | None = None,
                  results_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The records of every (config, seed) of the plan, each checked (:func:`check_record`),
    or a :class:`RecordsError` that names every missing, partial, corrupt, stale or
    unknown-format file and says the command that makes them. ``seeds`` is a count (the
    experiment's first seeds) or a list; ``only`` some configs (each once). It reads the
    committed records unless ``results_dir`` names another folder."""
    exp = get(experiment)
    return _checked(exp, _scale.validate(scale), dataset or exp.dataset, results_dir, plan(exp, seeds, only))


def _folder(exp: Experiment, scale: str, dataset: str, results_dir: str | Path | None) -> Path:
    return Path(results_dir or COMMITTED) / exp.name / scale / dataset


def _checked(exp: Experiment, sc: str, ds: str, results_dir: str | Path | None, runs: Sequence[Run],
             unknown: Sequence[str] = ()) -> list[dict[str, Any]]:
    folder = _folder(exp, sc, ds, results_dir)
    refused: dict[str, list[str]] = {"missing": [], "corrupt": [], "stale": [f"{n} (no such config in the registry)"
                                                                         for n in unknown], "format": []}
    records = []
    for r in runs:
        path = folder / f"{r.key}.json"
        if not path.exists():
            refused["missing"].append(path.name)
            continue
        try:
            records.append(check_record(path, exp, sc, ds))
        except RecordError as err:
            refused[err.kind].append(f"{path.name} ({err.reason})")
    if any(refused.values()):
        lines = [f"the records of {exp.name!r} ({sc} scale, {ds}) in {folder} are not whole:"]
        for what, key in (("missing", "missing"), ("partial or corrupt", "corrupt"),
                          ("stale (made with other settings than the registry's)", "stale"),
                          ("of a newer format", "format")):
            if refused[key]:
                names = refused[key]
                lines.append(f"  {what}: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
        if runs:
            last = max(r.seed for r in runs) - exp.first_seed + 1
            configs = sorted({r.config for r in runs}, key=exp.config_names.index)
            lines.append(f"make them with: python -m droplab.sweep run {exp.name} --scale {sc} --seeds {last} "
                         f"--only {','.join(configs)}" + (f" --dataset {ds}" if ds != exp.dataset else ""))
        raise RecordsError("\n".join(lines))
    return records


def load_whole(experiment: str | Experiment, scale: str, dataset: str | None = None,
               results_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every record a folder holds, shown whole or refused. Each config with a file there must
    have a record that passes the checks for every seed from the experiment's first to its
    last file's, and every file must be such a record (:func:`check_records`'s errors); an
    empty folder gives an empty list."""
    exp = get(experiment)
    sc, ds = _scale.validate(scale), dataset or exp.dataset
    last: dict[str, int] = {}
    for p in _folder(exp, sc, ds, results_dir).glob("*.json"):
        m = re.fullmatch(r"(.+)-seed(\d+)\.json", p.name)
        name, seed = (m.group(1), int(m.group(2))) if m else (p.stem, exp.first_seed)
        last[name] = max(last.get(name, seed), seed)
    unknown = sorted(n for n in last if n not in exp.config_names)
    runs = sorted(Run(s, exp.config_names.index(c), c) for c, top in last.items() if c in exp.config_names
                  for s in range(exp.first_seed, top + 1))
    return sorted_records(exp, _checked(exp, sc, ds, results_dir, runs, unknown)) if last else []


def provenance_summary(records: Sequence[dict[str, Any]]) -> str:
    """Where a set of records was made, in the sentence the chapters print under their tables:
    how many, on which devices with which torch, at which commits (12 hex digits, ``+dirty``
    where the tree had changes), and the training time
    summed over the runs (each sweep worker trains on one CPU core or one GPU)."""
    machines = sorted({f"{r['provenance']['device_name']} with torch {r['provenance']['torch']}" for r in records})
    commits = sorted({re.sub(r"^([0-9a-f]{12})[0-9a-f]+", r"\1", str(r["provenance"]["git_commit"])) for r in records})
    minutes = sum(r["wall_seconds"] for r in records) / 60
    return (f"{len(records)} records, made on {' and '.join(machines)}, commit{'s' if len(commits) > 1 else ''} "
            f"{', '.join(commits)}; {minutes:.0f} minutes of training in all (each run on one CPU core or one GPU)")


def paper_scale_report(experiment: str | Experiment, dataset: str) -> str:
    """Where the committed paper-scale records of ``experiment`` on ``dataset`` were made, with
    their table, shown whole or refused (:func:`load_whole`); where there are none yet, the
    command that makes them on one GPU."""
    exp = get(experiment)
    recs = load_whole(exp, "paper", dataset)
    if not recs:
        return (f"no paper-scale records of {exp.name} on {dataset} yet. To make them (one GPU), run from the "
                f"repository root:\n    python -m droplab.sweep run {exp.name} --scale paper --seeds 3 "
                f"--dataset {dataset}\n")
    from droplab import compare

    return (f"{exp.name}, paper scale, {dataset}, seeds {sorted({r['seed'] for r in recs})}: "
            f"{provenance_summary(recs)}\n{compare.text_table(recs)}")


def inventory(results_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per folder of records (committed ones by default), each loaded whole
    (:func:`load_whole`): experiment, scale, data set, records, seeds, configs and the
    training time summed over the runs, in CPU-core (or GPU) minutes."""
    root = Path(results_dir or COMMITTED)
    rows = []
    for folder in sorted(p for p in root.glob("*/*/*") if p.is_dir()):
        exp, sc, ds = folder.relative_to(root).parts
        recs = load_whole(exp, sc, ds, results_dir)
        if recs:
            rows.append({"experiment": exp, "scale": sc, "dataset": ds, "records": len(recs),
                         "seeds": len({r["seed"] for r in recs}), "configs": len({r["config"]["name"] for r in recs}),
                         "minutes": sum(r["wall_seconds"] for r in recs) / 60})
    return rows


def inventory_table(results_dir: str | Path | None = None) -> str:
    """:func:`inventory` as the Markdown table of ``lib/droplab/results/README.md``."""
    lines = ["| experiment | scale | data set | configs | seeds | records | CPU-core minutes |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['experiment']}` | {r['scale']} | {r['dataset']} | {r['configs']} | {r['seeds']} | {r['records']} | "
              f"{r['minutes']:.0f} |" for r in inventory(results_dir)]
    return "\n".join(lines)
