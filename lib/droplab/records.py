"""Run records: one JSON file per (config, seed), written atomically, read back, checked
against the registry and tabulated::

    data/results/<experiment>/<scale>/<dataset>/<config>-seed<k>.json

A record holds the run's spec (:func:`droplab.experiments.spec`), its history,
the fast path used, the provenance and, measured after training with dropout
off, ``final_train_acc`` (un-augmented training images), ``final_val_acc``
(images held out of the training split) and ``final_test_acc``.

From Python (chapters 3-5)::

    records = records.check_records("residual", "class", seeds=5)   # committed, whole and current, or an error
    rows = records.table(recs)       # mean +- 95% CI, paired difference from the baseline, power

The results folder is ``data/results`` in the repository, or ``DROPLAB_RESULTS``;
:func:`check_records` reads the committed ones unless told another folder.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from droplab import metrics
from droplab import scale as _scale
from droplab.experiments import Experiment, get, plan, spec
from droplab.train import Recipe

REPO_RESULTS = Path(__file__).resolve().parents[2] / "data" / "results"
METRIC = "final_test_acc"


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
    return sorted_records(exp, recs)


def sorted_records(exp: Experiment, recs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
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

    @property
    def paired(self) -> tuple[float, float, float, int]:
        """The comparison with the baseline in one tuple: (diff, diff_ci95, mde, n_paired)."""
        return self.diff, self.diff_ci95, self.mde, self.n_paired


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
    """Chapters 3-4's paper-scale section: where the committed paper-scale records of
    ``experiment`` on ``dataset`` were made, with their table; where there are none yet, the
    command that makes them on one GPU."""
    exp = get(experiment)
    recs = load_records(exp, "paper", dataset, results_dir=REPO_RESULTS)
    if not recs:
        return (f"no paper-scale records of {exp.name} on {dataset} yet. To make them (one GPU), run from the "
                f"repository root:\n    python -m droplab.sweep run {exp.name} --scale paper --seeds 3 "
                f"--dataset {dataset} --results data/results\n")
    return (f"{exp.name}, paper scale, {dataset}, seeds {sorted({r['seed'] for r in recs})}: "
            f"{provenance_summary(recs)}\n{format_table(table(recs))}")


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
        if pos is None or cfg.get("p") is None or v is None or cfg["name"] != f"{pos}-p{cfg['p']:g}":
            continue  # not a grid config (e.g. chapter 4's noise-matched ones)
        by.setdefault(pos, {}).setdefault(float(cfg["p"]), []).append(float(v))
    return {pos: min(ps, key=lambda q: (-sum(ps[q]) / len(ps[q]), q)) for pos, ps in by.items()}


def paired_differences(records: Sequence[dict[str, Any]], config: str, baseline: str,
                       metric: str = METRIC) -> dict[int, float]:
    """Seed by seed, ``metric`` of ``config`` minus that of ``baseline``, over the seeds both
    have finished (diverged runs left out); an error names a config without records."""
    vals: dict[str, dict[int, float]] = {config: {}, baseline: {}}
    for r in records:
        name, v = r["config"]["name"], r.get(metric)
        if name in vals and v is not None and math.isfinite(v) and not r["history"].get("diverged"):
            vals[name][int(r["seed"])] = float(v)
    empty = [c for c, v in vals.items() if not v]
    if empty:
        raise ValueError(f"no finished records of {', '.join(empty)} to compare")
    return {s: vals[config][s] - vals[baseline][s] for s in sorted(set(vals[config]) & set(vals[baseline]))}


def compare(records: Sequence[dict[str, Any]], config: str, baseline: str, metric: str = METRIC) -> Row:
    """``config`` against any other config of the same records, paired by seed: a :class:`Row`
    as :func:`table` gives against the registry's baseline (``diff``, ``diff_ci95``, ``mde``)."""
    diffs = list(paired_differences(records, config, baseline, metric).values())
    own = [float(r[metric]) for r in records if r["config"]["name"] == config and r.get(metric) is not None]
    row = Row(config, len(own), *metrics.mean_ci95(own), baseline, math.nan)
    if diffs:
        row.diff, row.diff_ci95 = metrics.mean_ci95(diffs)
        row.mde, row.n_paired = metrics.minimum_detectable_effect(diffs), len(diffs)
    return row


def best_on_validation(records: Sequence[dict[str, Any]], configs: Sequence[str],
                       metric: str = "final_val_acc") -> str:
    """Of ``configs``, the one whose records have the best mean ``metric`` (validation accuracy,
    never the test split); ties go to the one listed first. Chooses chapter 6's early-dropout
    epoch count; :func:`tuned_p` does the same for a position's drop probability."""
    by: dict[str, list[float]] = {c: [] for c in configs}
    for r in records:
        name, v = r["config"]["name"], r.get(metric)
        if name in by and v is not None:
            by[name].append(float(v))
    missing = [c for c, v in by.items() if not v]
    if missing:
        raise ValueError(f"no {metric} in the records of {', '.join(missing)}")
    return min(configs, key=lambda c: (-sum(by[c]) / len(by[c]), list(configs).index(c)))


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
