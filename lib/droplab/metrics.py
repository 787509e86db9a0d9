"""Summaries for the book's tables and figures: a mean with its 95 % interval or standard error,
the AUROC of a score, the epoch a learning curve reaches a target, and the one formatter and table
style of the book. Comparisons of configurations (paired differences, verdicts, Holm's correction)
live in :mod:`droplab.compare`.

- :func:`mean_ci95`: the mean over seeds and its Student-t 95 % interval;
- :func:`mean_se`: a mean and its standard error, for per-image (paired)
  quantities over thousands of test images, where the book states effects in
  standard errors;
- :func:`auroc`: the area under the ROC curve of a score that should be high
  on "out" inputs and low on "in" inputs, from ranks (Mann-Whitney U);
- :func:`epochs_to_target`: the first epoch at which a learning curve
  reaches a target, for "dropout slows convergence";
- :func:`pm`, :func:`styled`: ``mean ± half-width`` as text, and a table as the book shows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats as _stats


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95 % CI half-width t_{0.975, n-1} s / sqrt(n); the half-width is NaN for n < 2."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(_stats.t.ppf(0.975, n - 1)) * s / math.sqrt(n)


def mean_se(values) -> tuple[float, float]:  # a tensor, array or sequence
    """Mean and standard error ``s / sqrt(n)`` (``s`` with ``n - 1``) of ``values``: a tensor, an
    array or a sequence, e.g. the per-image differences of two predictions (chapter 1 checks
    effects "by more than five standard errors"). Computed in float64; the standard error is NaN
    for fewer than two values."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        return math.nan, math.nan
    if arr.size == 1:
        return float(arr[0]), math.nan
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size))



def _flat(scores, what: str) -> np.ndarray:  # tensor, array or sequence
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(scores, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{what} is empty; AUROC needs at least one score on each side")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinite scores; AUROC needs finite scores")
    return arr


def auroc(scores_in, scores_out) -> float:  # tensors, arrays or sequences
    """Area under the ROC curve for flagging "out" inputs by a high score.

    Equals the probability that a random "out" score exceeds a random "in"
    score, ties counting one half: 1 is perfect separation, 0.5 is chance,
    below 0.5 the score ranks the "in" inputs higher. Computed from the
    average ranks of the pooled scores (the Mann-Whitney U statistic divided
    by ``n_in * n_out``), in O(n log n).
    """
    a = _flat(scores_in, "scores_in")
    b = _flat(scores_out, "scores_out")
    pooled = np.concatenate([a, b])
    _, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)                       # rank of the last member of each tie group
    ranks = (ends - (counts - 1) / 2.0)[inverse]   # average rank (1-based) of each score
    u = ranks[a.size:].sum() - b.size * (b.size + 1) / 2.0
    return float(u / (a.size * b.size))


def pm(mean: float, ci95: float, scale: float = 100.0, digits: int = 2, signed: bool = False) -> str:
    """``mean ± ci95`` as text, both times ``scale`` (percent points by default);
    "n/a (one seed)" in place of a NaN interval. The one formatter of the book's tables."""
    if not math.isfinite(mean):
        return "n/a"
    m = f"{scale * mean:+.{digits}f}" if signed else f"{scale * mean:.{digits}f}"
    return f"{m} ± {scale * ci95:.{digits}f}" if math.isfinite(ci95) else f"{m} (one seed)"


def styled(frame, caption: str):  # a pandas DataFrame -> its Styler
    """A results table as the book shows it: an HTML table with a caption, no index column."""
    return frame.style.hide(axis="index").set_caption(caption)


def epochs_to_target(curve: Sequence[float], target: float) -> float:
    """The first epoch (1-based) at which ``curve`` reaches ``target`` (``>=``).

    A curve that never reaches it is censored at ``len(curve) + 1``. NaN
    entries (epochs not evaluated) never count as reaching it.
    """
    for epoch, value in enumerate(curve, start=1):
        if value is not None and math.isfinite(value) and value >= target:
            return float(epoch)
    return float(len(curve) + 1)


__all__ = [
    "auroc",
    "epochs_to_target",
    "mean_ci95",
    "mean_se",
    "pm",
    "styled",
]
