"""Statistics for claims: t-quantiles, mean ± 95 % CI, paired differences, power, verdicts.

- :func:`t_quantile`, :func:`mean_ci95`: Student's t and the 95 % confidence
  interval of a mean over seeds;
- :func:`mean_se`: a mean and its standard error, for per-image (paired)
  quantities over thousands of test images, where the book states effects in
  standard errors;
- :func:`minimum_detectable_effect`: the smallest paired difference that the
  seeds at hand would detect with 80 % power (two-sided 5 % test);
- :func:`verdict`: the book's one three-valued verdict on a claim that
  predicts the sign of a difference: *supports*, *contradicts* or
  *unresolved (smallest detectable effect X)*;
- :func:`joint_verdict`: the verdict on a claim tested in several parts
  (networks, regimes, shifts), in the same three words;
- :func:`auroc`: the area under the ROC curve of a score that should be high
  on "out" inputs and low on "in" inputs, from ranks (Mann-Whitney U);
- :func:`paired_difference`: mean and 95% CI half-width of per-seed
  differences ``a[i] - b[i]`` (runs paired by seed share data order and
  initialisation, so the difference is less noisy than either mean);
- :func:`resolved_sign`: the sign a difference and its CI resolve (+1, -1 or
  0), the rule behind :func:`verdict`;
- :func:`epochs_to_target`: the first epoch at which a learning curve
  reaches a target, for "dropout slows convergence".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

VERDICT_WORDS: tuple[str, ...] = ("supports", "contradicts", "unresolved")

# Two-sided 95 % (t_{0.975, df}) and 80 % power (t_{0.80, df}) quantiles of Student's t, df = 1..30.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
T80 = (1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879,
       0.876, 0.873, 0.870, 0.868, 0.866, 0.865, 0.863, 0.862, 0.861, 0.860,
       0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854)
_Z = {0.975: 1.959964, 0.80: 0.841621}


def t_quantile(df: int, q: float = 0.975) -> float:
    """Student's t quantile t_{q, df} for q = 0.975 or 0.80: a table to df = 30, then the
    Cornish-Fisher expansion z + (z^3 + z)/(4 df) + (5z^5 + 16z^3 + 3z)/(96 df^2)."""
    if q not in _Z:
        raise ValueError(f"t_quantile knows q = 0.975 and 0.80, got {q!r}")
    if df < 1:
        return math.nan
    table = T975 if q == 0.975 else T80
    if df <= len(table):
        return table[df - 1]
    z = _Z[q]
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t975(df: int) -> float:
    """t_{0.975, df}, the quantile of a two-sided 95 % interval."""
    return t_quantile(df, 0.975)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95 % CI half-width t_{0.975, n-1} s / sqrt(n); the half-width is NaN for n < 2."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t975(n - 1) * s / math.sqrt(n)


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


def minimum_detectable_effect(differences: Sequence[float]) -> float:
    """The smallest true paired difference a two-sided 5 % t-test on these ``n`` pairs would
    detect with 80 % power: ``(t_{0.975, n-1} + t_{0.80, n-1}) s / sqrt(n)``, with ``s`` the
    standard deviation of the observed differences (NaN for fewer than two pairs)."""
    n = len(differences)
    if n < 2:
        return math.nan
    mean = sum(differences) / n
    s = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    return (t_quantile(n - 1, 0.975) + t_quantile(n - 1, 0.80)) * s / math.sqrt(n)


def verdict(mean: float, ci95: float, claimed_sign: int, mde: float | None = None, *, unit: str = "",
            scale: float = 1.0) -> str:
    """The book's verdict on a claim that predicts the sign of a difference.

    ``"supports"`` if the 95 % CI excludes 0 on the claimed side, ``"contradicts"``
    if it excludes 0 on the other side, and ``"unresolved (smallest detectable
    effect X)"`` if it contains 0: an underpowered test refutes nothing. ``X``
    is ``mde`` times ``scale`` with ``unit`` (e.g. ``scale=100, unit=" pts"``).
    """
    if claimed_sign not in (1, -1):
        raise ValueError(f"claimed_sign must be +1 (a > b) or -1 (a < b); got {claimed_sign!r}")
    s = resolved_sign(mean, ci95)
    if s == claimed_sign:
        return "supports"
    if s == -claimed_sign:
        return "contradicts"
    x = f"{scale * mde:.2f}{unit}" if mde is not None and math.isfinite(mde) else "not estimable from one seed"
    return f"unresolved (smallest detectable effect {x})"


_UNRESOLVED = "unresolved (smallest detectable effect "


def joint_verdict(parts: dict[str, str]) -> str:
    """One verdict on a claim tested in several parts, from each part's :func:`verdict`.

    ``parts`` maps a name (a network, a regime, a shift) to that part's verdict.
    If every part has the same word, that word: ``"supports"``, ``"contradicts"``
    or ``"unresolved (smallest detectable effect X for A, Y for B)"`` (one ``X``
    if the parts share it). Otherwise each part's verdict, named by its part:
    ``"A: supports; B: unresolved (smallest detectable effect Y)"``; an
    unresolved part neither confirms nor cancels a resolved one.
    """
    if not parts:
        raise ValueError("joint_verdict needs at least one part, e.g. {'MLP': 'supports'}")
    words = {}
    for name, v in parts.items():
        word = v.split(" (")[0]
        if word not in VERDICT_WORDS:
            raise ValueError(f"the verdict of part {name!r} is {v!r}; expected one of {VERDICT_WORDS} "
                             f"(as metrics.verdict writes it)")
        words[name] = word
    if len(set(words.values())) > 1:
        return "; ".join(f"{name}: {v}" for name, v in parts.items())
    word = next(iter(words.values()))
    if word != "unresolved":
        return word
    details = {name: v[len(_UNRESOLVED):-1] if v.startswith(_UNRESOLVED) else v[len("unresolved ("):-1]
               for name, v in parts.items()}
    if len(set(details.values())) == 1:
        return f"{_UNRESOLVED}{next(iter(details.values()))})"
    return _UNRESOLVED + ", ".join(f"{d} for {name}" for name, d in details.items()) + ")"


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


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width (Student's t over pairs) of ``a[i] - b[i]``.

    ``a`` and ``b`` are results of two configurations, one per seed, in the
    same seed order. The half-width is NaN for a single pair.
    """
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists (one value per seed); "
                         f"got {len(a)} and {len(b)}")
    return mean_ci95([float(x) - float(y) for x, y in zip(a, b)])


def resolved_sign(mean: float, ci95: float) -> int:
    """+1 if the interval ``mean ± ci95`` lies above 0, -1 if below, 0 if it contains 0
    (or the half-width is NaN, e.g. one seed): the sign the data resolve."""
    if not math.isfinite(mean) or not math.isfinite(ci95):
        return 0
    if mean - ci95 > 0:
        return 1
    if mean + ci95 < 0:
        return -1
    return 0


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
    "VERDICT_WORDS",
    "auroc",
    "epochs_to_target",
    "joint_verdict",
    "mean_ci95",
    "mean_se",
    "minimum_detectable_effect",
    "paired_difference",
    "pm",
    "resolved_sign",
    "styled",
    "t975",
    "t_quantile",
    "verdict",
]
