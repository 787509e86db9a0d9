"""Comparisons over seeds and the verdicts the book draws from them, as data.

A :class:`Comparison` is one config against another, paired by seed: the seed-by-seed
differences, their mean, an interval, the paired t-test's p-value, the correction
applied and the :class:`Verdict` on a claim that predicts which one is better. The
chapters, the tables, the forest plots and the guide all read these fields;
nothing parses a verdict back from text.

- :func:`compare` (records) and :func:`of_values` (two lists of per-seed values, for
  live comparisons in a chapter): one comparison, 95 % interval, exploratory;
- :func:`primary`: the contrasts an experiment declared before its runs
  (:attr:`droplab.experiments.Experiment.primary`), corrected together by Holm's
  step-down method (Holm 1979): each verdict reads the Holm-adjusted p-value, and
  each interval is drawn at the level of the step that judged it, so an interval
  excludes zero exactly when Holm rejects;
- :func:`against_baselines`: every config against the baseline the registry gives it
  (exploratory), :func:`summarize`: each config's mean over seeds;
- :func:`detectable_effect`: the smallest true difference a test of ``n`` pairs would
  detect with 80 % power, from a standard deviation known *before* the test (a pilot's,
  or pooled over an experiment: :func:`pooled_sd`), never from the pairs being tested;
- :func:`frame`: comparisons as the book's table; :func:`droplab.plots.forest` draws them.

Accuracies are higher-is-better, losses lower-is-better: a claim's ``sign`` says which
config it predicts to be *better* (+1: ``config``), whatever the metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from scipy import stats as _stats

from droplab.experiments import Experiment, get

METRIC = "final_test_acc"
ALPHA = 0.05
POWER = 0.80


class Verdict(str, Enum):
    """The book's three verdicts on a claim that predicts which of two configs is better."""

    SUPPORTS = "supports"
    CONTRADICTS = "contradicts"
    UNRESOLVED = "unresolved"

    def __str__(self) -> str:
        return self.value


def higher_is_better(metric: str) -> bool:
    """Accuracies are better high, losses (NLL) low."""
    return not metric.endswith("_loss")


def t_quantile(q: float, df: int) -> float:
    """Student's t quantile of probability ``q`` with ``df`` degrees of freedom (NaN for df < 1)."""
    return float(_stats.t.ppf(q, df)) if df >= 1 else math.nan


def detectable_effect(sd: float, n: int, level: float = 1 - ALPHA, power: float = POWER) -> float:
    """The smallest true paired difference a two-sided test at ``level`` on ``n`` pairs detects
    with probability ``power``: ``(t_{1-(1-level)/2, n-1} + t_{power, n-1}) sd / sqrt(n)``.
    ``sd`` must be known before the test (a pilot's, or :func:`pooled_sd` over an experiment's
    other pairs): an SD taken from the pairs under test would make this post-hoc power."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return (t_quantile(1 - (1 - level) / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


@dataclass(frozen=True)
class Comparison:
    """``config`` minus ``baseline`` in ``metric``, paired by seed.

    ``low``/``high`` bound the mean difference at confidence ``level`` (0.95 for an
    exploratory comparison; the Holm step's level for a primary one); ``p`` is the two-sided
    paired t-test's p-value and ``p_adjusted`` the Holm-adjusted one (equal to ``p`` when
    nothing is corrected). ``claim`` says what is tested, ``sign`` which config it predicts to
    be better (+1: ``config``). ``detectable`` is the effect the design could detect, stated
    beforehand (NaN if none was given)."""

    config: str
    baseline: str
    metric: str
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    mean: float
    low: float
    high: float
    level: float
    p: float
    p_adjusted: float
    correction: str = "none (exploratory)"
    primary: bool = False
    claim: str = ""
    sign: int = 1
    detectable: float = math.nan
    diverged: Mapping[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.config} − {self.baseline}"

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def resolved(self) -> int:
        """+1 if the interval lies above zero, -1 below, 0 if it contains zero (or cannot be drawn)."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return 0
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    @property
    def verdict(self) -> Verdict:
        """*supports* if the interval says ``config`` is better on the claimed side, *contradicts*
        if it says the other side, *unresolved* if it contains zero (which refutes nothing)."""
        better = self.resolved * (1 if higher_is_better(self.metric) else -1)
        if better == 0:
            return Verdict.UNRESOLVED
        return Verdict.SUPPORTS if better == self.sign else Verdict.CONTRADICTS

    @property
    def rules_out(self) -> float:
        """The largest advantage of the claimed-better config that the interval still allows:
        an unresolved comparison rules out advantages above this (in the metric's units)."""
        up = self.high if (self.sign > 0) == higher_is_better(self.metric) else -self.low
        return up

    def text(self, scale: float = 100.0, unit: str = " points", digits: int = 2) -> str:
        """``+0.53 [+0.12, +0.94] points, supports (Holm over 5)``: the line a chapter prints."""
        corr = "" if not self.primary else f" ({self.correction})"
        if not math.isfinite(self.low):
            return f"{scale * self.mean:+.{digits}f}{unit} (one seed), {self.verdict}"
        return (f"{scale * self.mean:+.{digits}f} [{scale * self.low:+.{digits}f}, {scale * self.high:+.{digits}f}]"
                f"{unit}, {self.verdict}{corr}")


def _interval(diffs: Sequence[float], level: float) -> tuple[float, float, float, float]:
    """Mean, the two-sided interval at ``level`` and the paired t-test's p-value."""
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0:
        return mean, mean, mean, (1.0 if mean == 0 else 0.0)
    half = t_quantile(1 - (1 - level) / 2, n - 1) * se
    p = 2 * float(_stats.t.sf(abs(mean) / se, n - 1))
    return mean, mean - half, mean + half, p


def of_values(a: Sequence[float], b: Sequence[float], *, config: str = "a", baseline: str = "b",
              metric: str = "value", claim: str = "", sign: int = 1, level: float = 1 - ALPHA,
              seeds: Sequence[int] | None = None, detectable: float = math.nan) -> Comparison:
    """``a[i] - b[i]`` over pairs (seeds) as a :class:`Comparison`, exploratory. For values a
    chapter computes live (``metric`` names them; a name ending in ``_loss`` is lower-is-better)."""
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"a paired comparison needs two equally long, non-empty lists (one value per seed); "
                         f"got {len(a)} and {len(b)}")
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 ({config} predicted better) or -1 ({baseline} better); got {sign!r}")
    diffs = tuple(float(x) - float(y) for x, y in zip(a, b))
    mean, low, high, p = _interval(diffs, level)
    return Comparison(config, baseline, metric, tuple(seeds if seeds is not None else range(len(diffs))), diffs,
                      mean, low, high, level, p, p, claim=claim, sign=sign, detectable=detectable)


def _values(records: Sequence[Mapping[str, Any]], config: str, metric: str) -> tuple[dict[int, float], int]:
    vals, diverged = {}, 0
    for r in records:
        if r["config"]["name"] != config:
            continue
        v = r.get(metric)
        if v is None or r["history"].get("diverged") or not math.isfinite(v):
            diverged += 1
        else:
            vals[int(r["seed"])] = float(v)
    return vals, diverged


def paired(records: Sequence[Mapping[str, Any]], config: str, baseline: str, metric: str = METRIC
           ) -> dict[int, float]:
    """Seed by seed, ``metric`` of ``config`` minus that of ``baseline``, over the seeds both
    finished (diverged runs left out); an error names a config without a finished record."""
    a, _ = _values(records, config, metric)
    b, _ = _values(records, baseline, metric)
    empty = [c for c, v in ((config, a), (baseline, b)) if not v]
    if empty:
        raise ValueError(f"no finished records of {', '.join(empty)} with {metric} to compare")
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def compare(records: Sequence[Mapping[str, Any]], config: str, baseline: str, metric: str = METRIC, *,
            claim: str = "", sign: int = 1, level: float = 1 - ALPHA, detectable: float = math.nan) -> Comparison:
    """``config`` against ``baseline`` in the same records, paired by seed, exploratory."""
    d = paired(records, config, baseline, metric)
    cmp = of_values(list(d.values()), [0.0] * len(d), config=config, baseline=baseline, metric=metric,
                    claim=claim, sign=sign, level=level, seeds=list(d), detectable=detectable)
    div = {c: n for c in (config, baseline) if (n := _values(records, c, metric)[1])}
    return cmp if not div else _replace(cmp, diverged=div)


def _replace(c: Comparison, **changes: Any) -> Comparison:
    from dataclasses import replace

    return replace(c, **changes)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given: the i-th smallest p
    times (m - i + 1), made monotone, capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [math.nan] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def correct(comparisons: Sequence[Comparison], alpha: float = ALPHA, family: str = "") -> list[Comparison]:
    """The comparisons judged together by Holm's method: adjusted p-values, and each interval at
    the level of the step that judged it (1 - alpha/(m - k + 1) at the k-th smallest p, held at
    the first step that fails to reject), so that an interval excludes zero exactly when Holm
    rejects. ``family`` names them in ``correction``. The order given is kept."""
    m = len(comparisons)
    if m == 0:
        return []
    adjusted = holm([c.p for c in comparisons])
    order = sorted(range(m), key=lambda i: comparisons[i].p)
    levels, stopped = [math.nan] * m, None
    for rank, i in enumerate(order):
        step = 1 - alpha / (m - rank)
        if stopped is None and not comparisons[i].p <= alpha / (m - rank):
            stopped = step
        levels[i] = step if stopped is None else stopped
    out = []
    for c, adj, lev in zip(comparisons, adjusted, levels):
        _, low, high, _ = _interval(c.diffs, lev)
        out.append(_replace(c, low=low, high=high, level=lev, p_adjusted=adj, primary=True,
                            correction=f"Holm over {m}{' ' + family if family else ''}"))
    return out


def primary(records: Sequence[Mapping[str, Any]], experiment: str | Experiment, metric: str = METRIC, *,
            planning_sd: float = math.nan) -> list[Comparison]:
    """The primary contrasts the experiment declared, from its records, corrected together by
    Holm. ``planning_sd`` (an SD of paired differences known before the runs, e.g. the pilot's)
    gives each its detectable effect at the Bonferroni level (Holm's first step, the strictest)."""
    exp = get(experiment)
    if not exp.primary:
        raise ValueError(f"experiment {exp.name!r} declares no primary contrasts; compare its configs with "
                         f"compare.compare (exploratory)")
    m = len(exp.primary)
    raw = [compare(records, c.config, c.baseline, metric, claim=c.claim, sign=c.sign) for c in exp.primary]
    raw = [_replace(c, detectable=detectable_effect(planning_sd, c.n, 1 - ALPHA / m)) for c in raw]
    return correct(raw, family="primary contrasts")


def against_baselines(records: Sequence[Mapping[str, Any]], metric: str = METRIC, *, sign: int = 1
                      ) -> list[Comparison]:
    """Each config against the baseline its experiment's registry gives it (not the record's),
    exploratory, in registry order; configs that are their own baseline, or have none, are left out."""
    if not records:
        return []
    exp = get(records[0]["experiment"])
    present = {r["config"]["name"] for r in records}
    out = []
    for cfg in exp.configs:
        if cfg.name in present and cfg.baseline in present and cfg.baseline != cfg.name:
            out.append(compare(records, cfg.name, cfg.baseline, metric, sign=sign))
    return out


@dataclass(frozen=True)
class Summary:
    """One config's ``metric`` over its finished seeds: mean and 95 % interval half-width."""

    config: str
    n: int
    mean: float
    ci95: float
    diverged: int = 0


def summarize(records: Sequence[Mapping[str, Any]], metric: str = METRIC) -> list[Summary]:
    """One :class:`Summary` per config, in the order the records first name them."""
    names = list(dict.fromkeys(r["config"]["name"] for r in records))
    out = []
    for name in names:
        vals, div = _values(records, name, metric)
        v = list(vals.values())
        if not v:
            out.append(Summary(name, 0, math.nan, math.nan, div))
            continue
        mean, low, high, _ = _interval(v, 1 - ALPHA)
        out.append(Summary(name, len(v), mean, (high - low) / 2 if math.isfinite(low) else math.nan, div))
    return out


def pooled_sd(comparisons: Sequence[Comparison]) -> float:
    """The pooled standard deviation of the paired differences of several comparisons (each
    with its own mean): the planning SD for an experiment that follows them."""
    num = den = 0.0
    for c in comparisons:
        if c.n >= 2:
            num += sum((d - c.mean) ** 2 for d in c.diffs)
            den += c.n - 1
    return math.sqrt(num / den) if den else math.nan


def joint(comparisons: Mapping[str, Comparison]) -> str:
    """One verdict on a claim tested in several parts (networks, regimes): the shared verdict if
    every part has it, else each part's named (an unresolved part neither confirms nor cancels a
    resolved one)."""
    if not comparisons:
        raise ValueError("a joint verdict needs at least one part")
    verdicts = {name: c.verdict for name, c in comparisons.items()}
    if len(set(verdicts.values())) == 1:
        return str(next(iter(verdicts.values())))
    return "; ".join(f"{name}: {v}" for name, v in verdicts.items())


def frame(comparisons: Sequence[Comparison], scale: float = 100.0, quoted: Mapping[str, str] | None = None,
          quoted_label: str = "Kim et al. (quoted)"):  # -> pandas.DataFrame
    """Comparisons as the book's table: the difference with its interval, the test's p-values,
    the correction and the verdict (and a column quoted from a paper, by comparison name)."""
    import pandas as pd

    rows = []
    for c in comparisons:
        row = {"comparison": c.name, "seeds": c.n,
               "difference": _interval_text(c, scale),
               "interval": f"{100 * c.level:.2f} %".replace(".00 %", " %"),
               "p (adjusted)": (f"{c.p:.3f}" if not c.primary else f"{c.p:.3f} ({c.p_adjusted:.3f})")
               if math.isfinite(c.p) else "n/a",
               "verdict": str(c.verdict)}
        if c.primary:
            row["correction"] = c.correction
        if math.isfinite(c.detectable):
            row["detectable a priori"] = f"{scale * c.detectable:.2f}"
        if quoted is not None:
            row[quoted_label] = quoted.get(c.name, "")
        rows.append(row)
    return pd.DataFrame(rows)


def results_frame(records: Sequence[Mapping[str, Any]], metric: str = METRIC, *, scale: float = 100.0,
                  configs: Sequence[str] | None = None, quoted: Mapping[str, str] | None = None,
                  quoted_label: str = "Kim et al. (quoted)"):  # -> pandas.DataFrame
    """The book's results table: each config's ``metric`` (mean and 95 % interval over seeds) and
    its difference from the baseline the registry gives it (95 % interval, exploratory), in
    ``scale`` units; ``configs`` picks and orders the rows; ``quoted`` adds a column quoted from
    a paper, by config name."""
    import pandas as pd

    sums = {s.config: s for s in summarize(records, metric)}
    diffs = {c.config: c for c in against_baselines(records, metric)}
    rows = []
    for name in (configs or list(sums)):
        s, c = sums[name], diffs.get(name)
        row = {"config": name, "seeds": s.n if not s.diverged else f"{s.n} ({s.diverged} diverged)",
               _metric_label(metric): _pm(s.mean, s.ci95, scale),
               "difference from baseline": "baseline" if c is None else f"{_interval_text(c, scale)} vs {c.baseline}"}
        if quoted is not None:
            row[quoted_label] = quoted.get(name, "")
        rows.append(row)
    return pd.DataFrame(rows)


def _interval_text(c: Comparison, scale: float) -> str:
    if not math.isfinite(c.low):
        return f"{scale * c.mean:+.2f} (one seed)"
    return f"{scale * c.mean:+.2f} [{scale * c.low:+.2f}, {scale * c.high:+.2f}]"


def _metric_label(metric: str) -> str:
    split, _, kind = metric.replace("final_", "").partition("_")
    return f"{ {'val': 'validation'}.get(split, split)} {'accuracy (%)' if kind == 'acc' else 'loss (NLL)'}"


def _pm(mean: float, half: float, scale: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{scale * mean:.2f} ± {scale * half:.2f}" if math.isfinite(half) else f"{scale * mean:.2f} (one seed)"


def text_table(records: Sequence[Mapping[str, Any]], metric: str | None = None) -> str:
    """:func:`results_frame` as plain text (``sweep table``, the paper-scale report). The metric
    is test accuracy, or validation accuracy for runs that had no test split."""
    metric = metric or (METRIC if any(r.get(METRIC) is not None for r in records) else "final_val_acc")
    scale = 100.0 if metric.endswith("_acc") else 1.0
    return results_frame(records, metric, scale=scale).to_string(index=False)


def tuned_p(records: Sequence[Mapping[str, Any]], metric: str = "final_val_acc") -> dict[str, float]:
    """Each position's drop probability with the best mean ``metric`` (validation accuracy:
    never the test split) over the records of a tuning experiment (configs named
    ``<position>-p<p>``; others, e.g. chapter 4's noise-matched ones, are ignored); ties go to
    the smaller p."""
    by: dict[str, dict[float, list[float]]] = {}
    for r in records:
        net, v = r["spec"]["net"], r.get(metric)
        pos = net.get("dropout_at") or net.get("head_dropout_at")
        if pos is None or v is None or r["config"]["name"] != f"{pos}-p{net['p']:g}":
            continue
        by.setdefault(pos, {}).setdefault(float(net["p"]), []).append(float(v))
    return {pos: min(ps, key=lambda q: (-sum(ps[q]) / len(ps[q]), q)) for pos, ps in by.items()}


def best_on_validation(records: Sequence[Mapping[str, Any]], configs: Sequence[str],
                       metric: str = "final_val_acc") -> str:
    """Of ``configs``, the one whose records have the best mean ``metric`` (validation accuracy,
    never the test split); ties go to the one listed first."""
    by: dict[str, list[float]] = {c: [] for c in configs}
    for r in records:
        name, v = r["config"]["name"], r.get(metric)
        if name in by and v is not None:
            by[name].append(float(v))
    missing = [c for c, v in by.items() if not v]
    if missing:
        raise ValueError(f"no {metric} in the records of {', '.join(missing)}")
    sign = 1 if higher_is_better(metric) else -1
    return min(configs, key=lambda c: (-sign * sum(by[c]) / len(by[c]), list(configs).index(c)))


def write_csv(comparisons: Sequence[Comparison], path: str) -> str:
    """Comparisons as CSV (one row each, every field but the per-seed lists), for a spreadsheet."""
    import csv
    from pathlib import Path

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ["config", "baseline", "metric", "n", "mean", "low", "high", "level", "p", "p_adjusted", "correction",
            "verdict"]
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for c in comparisons:
            w.writerow([getattr(c, k) if k not in ("verdict",) else str(c.verdict) for k in keys])
    return str(out)
