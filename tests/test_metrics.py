"""droplab.metrics: AUROC, paired differences with their t-interval, verdicts with the smallest
detectable effect, epochs to a target (chapters 3-5)."""

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


def test_paired_difference_is_the_mean_and_t_interval_of_the_differences() -> None:
    mean, ci = metrics.paired_difference([0.80, 0.82, 0.81], [0.78, 0.79, 0.80])
    diffs = [0.02, 0.03, 0.01]
    s = float(np.std(diffs, ddof=1))
    assert mean == pytest.approx(0.02)
    assert ci == pytest.approx(4.303 * s / math.sqrt(3))
    assert math.isnan(metrics.paired_difference([1.0], [0.5])[1])
    with pytest.raises(ValueError, match="equally long"):
        metrics.paired_difference([1.0, 2.0], [1.0])


def test_verdict_supports_contradicts_or_is_unresolved_with_the_detectable_effect() -> None:
    assert metrics.verdict(0.02, 0.01, +1, 0.015) == "supports"
    assert metrics.verdict(0.02, 0.01, -1, 0.015) == "contradicts"
    assert metrics.verdict(-0.02, 0.01, -1, 0.015) == "supports"
    assert (metrics.verdict(0.02, 0.03, +1, 0.0412, unit=" points", scale=100)
            == "unresolved (smallest detectable effect 4.12 points)")
    assert metrics.verdict(-0.02, 0.03, +1, 0.5, unit=" epochs") == "unresolved (smallest detectable effect 0.50 epochs)"
    assert (metrics.verdict(0.02, float("nan"), +1, float("nan"))
            == "unresolved (smallest detectable effect not estimable from one seed)")
    assert metrics.resolved_sign(-0.5, 0.1) == -1
    with pytest.raises(ValueError, match="claimed_sign"):
        metrics.verdict(0.1, 0.01, 0, 0.02)


def test_minimum_detectable_effect_is_t975_plus_t80_standard_errors_of_the_differences() -> None:
    # three pairs, s = 0.01: (t_{0.975,2} + t_{0.80,2}) s / sqrt 3 = (4.303 + 1.061) 0.01 / 1.732
    assert metrics.minimum_detectable_effect([0.01, 0.03, 0.02]) == pytest.approx(0.0309691, abs=1e-7)
    # six pairs, s = sqrt(3.5) * 0.001: (2.571 + 0.920) s / sqrt 6
    assert metrics.minimum_detectable_effect([0.001 * i for i in range(6)]) == pytest.approx(0.00266630, abs=1e-8)
    assert math.isnan(metrics.minimum_detectable_effect([0.3]))
    # it always exceeds the CI half-width of the same differences: a resolved test is not yet a powered one
    d = [0.2, -0.1, 0.4, 0.0]
    assert metrics.minimum_detectable_effect(d) > metrics.mean_ci95(d)[1]


@pytest.mark.parametrize("n", [5, 10])
def test_an_effect_of_the_minimum_detectable_size_is_resolved_four_times_in_five(n: int) -> None:
    rng = np.random.default_rng(n)
    sigma = 1.0
    effect = (metrics.t_quantile(n - 1, 0.975) + metrics.t_quantile(n - 1, 0.80)) * sigma / math.sqrt(n)
    draws = rng.normal(effect, sigma, size=(20_000, n))
    resolved = np.mean([metrics.resolved_sign(*metrics.mean_ci95(list(row))) == 1 for row in draws])
    assert resolved == pytest.approx(0.80, abs=0.025)


def test_joint_verdict_names_the_parts_only_when_they_disagree() -> None:
    unresolved = lambda x: f"unresolved (smallest detectable effect {x})"
    assert metrics.joint_verdict({"MLP": "supports", "CNN": "supports"}) == "supports"
    assert metrics.joint_verdict({"MLP": "contradicts", "CNN": "contradicts"}) == "contradicts"
    assert (metrics.joint_verdict({"MLP": "contradicts", "CNN": unresolved("1.20 points")})
            == "MLP: contradicts; CNN: unresolved (smallest detectable effect 1.20 points)")
    assert (metrics.joint_verdict({"MLP": unresolved("2.00 points"), "CNN": unresolved("1.20 points")})
            == "unresolved (smallest detectable effect 2.00 points for MLP, 1.20 points for CNN)")
    assert (metrics.joint_verdict({"MLP": unresolved("not estimable from one seed"),
                                   "CNN": unresolved("not estimable from one seed")})
            == unresolved("not estimable from one seed"))
    with pytest.raises(ValueError, match="holds"):
        metrics.joint_verdict({"MLP": "holds"})
    with pytest.raises(ValueError, match="at least one"):
        metrics.joint_verdict({})


def test_epochs_to_target_counts_from_one_and_censors_runs_that_never_arrive() -> None:
    assert metrics.epochs_to_target([0.5, 0.7, 0.9, 0.8], 0.7) == 2.0
    assert metrics.epochs_to_target([float("nan"), 0.9], 0.7) == 2.0
    assert metrics.epochs_to_target([0.5, 0.6], 0.7) == 3.0
