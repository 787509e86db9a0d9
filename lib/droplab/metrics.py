"""Small statistics for testing claims (chapter 5).

- :func:`auroc`: the area under the ROC curve of a score that should be high
  on "out" inputs and low on "in" inputs, from ranks (Mann-Whitney U);
- :func:`paired_difference`: mean and 95% CI half-width of per-seed
  differences ``a[i] - b[i]`` (runs paired by seed share data order and
  initialisation, so the difference is less noisy than either mean);
- :func:`resolved_sign` and :func:`directional_verdict`: the rule that turns a
  difference and its CI into a verdict on a claim that predicts its sign;
- :func:`epochs_to_target`: the first epoch at which a learning curve
  reaches a target, for "dropout slows convergence".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from droplab.sweep import mean_ci95

VERDICTS: tuple[str, ...] = ("holds", "fails", "fails (noisy)")


def _flat(scores, what: str) -> np.ndarray:  # noqa: ANN001 (tensor, array or sequence)
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(scores, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{what} is empty; AUROC needs at least one score on each side")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinite scores; AUROC needs finite scores")
    return arr


def auroc(scores_in, scores_out) -> float:  # noqa: ANN001 (tensors, arrays or sequences)
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


def directional_verdict(mean: float, ci95: float, claimed_sign: int) -> str:
    """The verdict on a claim that predicts the sign of a difference (chapter 5's rule).

    ``"holds"`` if the 95% CI excludes 0 on the claimed side, ``"fails"`` if it
    excludes 0 on the other side, ``"fails (noisy)"`` if it contains 0: the
    claimed effect did not show beyond the noise of this experiment.
    """
    if claimed_sign not in (1, -1):
        raise ValueError(f"claimed_sign must be +1 (a > b) or -1 (a < b); got {claimed_sign!r}")
    s = resolved_sign(mean, ci95)
    return "fails (noisy)" if s == 0 else ("holds" if s == claimed_sign else "fails")


def epochs_to_target(curve: Sequence[float], target: float) -> float:
    """The first epoch (1-based) at which ``curve`` reaches ``target`` (``>=``).

    A curve that never reaches it is censored at ``len(curve) + 1``. NaN
    entries (epochs not evaluated) never count as reaching it.
    """
    for epoch, value in enumerate(curve, start=1):
        if value is not None and math.isfinite(value) and value >= target:
            return float(epoch)
    return float(len(curve) + 1)


__all__ = ["VERDICTS", "auroc", "paired_difference", "resolved_sign", "directional_verdict", "epochs_to_target"]
