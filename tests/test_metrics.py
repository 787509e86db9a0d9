"""droplab.metrics: AUROC, a mean with its t-interval or standard error, epochs to a target
(chapters 1, 2 and 5). Paired comparisons and verdicts are droplab.compare's (tests/test_compare.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from droplab import metrics


def brute_force_auroc(a: np.ndarray, b: np.ndarray) -> float:
    wins = sum(1.0 if y > x else 0.5 if y == x else 0.0 for x, y in itertools.product(a, b))
    return wins / (len(a) * len(b))


def test_auroc_is_one_for_perfect_separation_and_zero_when_reversed() -> None:
    assert metrics.auroc([0.1, 0.2, 0.3], [0.5, 0.9]) == 1.0
    assert metrics.auroc([0.5, 0.9], [0.1, 0.2, 0.3]) == 0.0


def test_auroc_is_one_half_for_identical_scores() -> None:
    assert metrics.auroc([1.0, 1.0, 1.0], [1.0, 1.0]) == 0.5


def test_auroc_equals_the_pairwise_win_rate_with_ties_counting_half() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, size=40).astype(float)   # many ties
    b = rng.integers(1, 8, size=30).astype(float)
    assert metrics.auroc(a, b) == pytest.approx(brute_force_auroc(a, b), abs=1e-12)
    assert metrics.auroc(torch.tensor(a), torch.tensor(b)) == pytest.approx(brute_force_auroc(a, b), abs=1e-12)


def test_auroc_of_two_gaussians_matches_the_normal_formula() -> None:
    # out ~ N(d, 1), in ~ N(0, 1): AUROC = Phi(d / sqrt 2)
    g = torch.Generator().manual_seed(1)
    d = 1.0
    a = torch.randn(20_000, generator=g)
    b = torch.randn(20_000, generator=g) + d
    expected = 0.5 * (1 + math.erf(d / 2))
    assert metrics.auroc(a, b) == pytest.approx(expected, abs=0.01)


def test_auroc_rejects_empty_or_nan_scores() -> None:
    with pytest.raises(ValueError, match="empty"):
        metrics.auroc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc([float("nan")], [1.0])


def test_mean_se_is_the_mean_and_the_sample_standard_deviation_over_root_n() -> None:
    values = [1.0, 2.0, 4.0, 7.0]
    mean, se = metrics.mean_se(values)
    assert mean == pytest.approx(3.5)
    assert se == pytest.approx(float(np.std(values, ddof=1)) / 2.0)
    # a tensor of per-image 0/1 differences gives the same numbers as the list
    diffs = torch.tensor([1.0, 0.0, 0.0, -1.0, 1.0], dtype=torch.float32)
    assert metrics.mean_se(diffs) == pytest.approx(metrics.mean_se(diffs.tolist()))
    assert metrics.mean_se(diffs)[1] == pytest.approx(diffs.std().item() / math.sqrt(5))
    assert math.isnan(metrics.mean_se([0.3])[1]) and metrics.mean_se([0.3])[0] == 0.3
    assert all(math.isnan(v) for v in metrics.mean_se([]))


def test_mean_ci95_is_the_mean_and_students_t_interval() -> None:
    mean, ci = metrics.mean_ci95([0.02, 0.03, 0.01])
    assert mean == pytest.approx(0.02)
    assert ci == pytest.approx(4.302653 * 0.01 / math.sqrt(3))     # t_{0.975, 2} s / sqrt(n), s = 0.01
    assert math.isnan(metrics.mean_ci95([0.5])[1]) and metrics.mean_ci95([0.5])[0] == 0.5
    assert all(math.isnan(v) for v in metrics.mean_ci95([]))


def test_epochs_to_target_counts_from_one_and_censors_runs_that_never_arrive() -> None:
    assert metrics.epochs_to_target([0.5, 0.7, 0.9, 0.8], 0.7) == 2.0
    assert metrics.epochs_to_target([float("nan"), 0.9], 0.7) == 2.0
    assert metrics.epochs_to_target([0.5, 0.6], 0.7) == 3.0
