"""droplab.variance: the inconsistency ratio (Kim et al. Definition 2, Eq. 3) and the formulas of
Eqs. 6-35 agree with measurement."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from droplab import variance as V
from droplab.dropout import Dropout, UniformDropout

BATCH = 20_000


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("layer", [nn.Dropout, Dropout])
def test_dropout_alone_matches_dropout_ratio(p: float, layer: type[nn.Module]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 64, generator=g, dtype=torch.float64) * 1.5 + 0.8
    measured = V.inconsistency_ratio(layer(p), x)
    assert measured == pytest.approx(V.dropout_ratio(1.5**2, 0.8, p), rel=0.02)
    assert measured < 1


def test_dropout_ratio_is_one_without_dropout() -> None:
    assert V.dropout_ratio(2.0, 3.0, 0.0) == 1.0


def test_relu_gaussian_moments_match_eqs_12_13() -> None:
    z = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.0
    r = torch.relu(z)
    assert r.mean().item() == pytest.approx(V.relu_gaussian_mean(2.0), rel=0.01)
    assert r.var().item() == pytest.approx(V.relu_gaussian_var(2.0), rel=0.01)


def test_branch_variances_give_the_nonresidual_ratio() -> None:
    """Eqs. 18-19 divided give Eq. 29."""
    for p in (0.1, 0.5):
        assert V.branch_variance_test(1.7) / V.branch_variance_train(p, 1.7) == pytest.approx(V.ratio_nonresidual(p))


def test_ratio_residual_depth_decreases_towards_the_nonresidual_ratio() -> None:
    r = [V.ratio_residual_depth(0.5, 1.0, d) for d in (1, 10, 1000)]
    assert r[0] > r[1] > r[2] > V.ratio_nonresidual(0.5)
    assert r[2] == pytest.approx(V.ratio_nonresidual(0.5), rel=0.01)
    assert V.ratio_residual_depth(0.5, 1.0, 2, gamma=[1.0, 1.0]) == V.ratio_residual_depth(0.5, 1.0, 2)


def test_inconsistency_ratio_restores_modes_and_running_stats() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 8), nn.BatchNorm1d(8))
    net.train()
    net[1].eval()
    net[3].eval()
    modes = [m.training for m in net.modules()]
    stats = [b.clone() for b in net.buffers()]
    V.inconsistency_ratio(net, torch.randn(256, 8))
    assert [m.training for m in net.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(stats, net.buffers()))


def test_inconsistency_ratio_repeats_with_a_seed() -> None:
    x = torch.randn(512, 16)
    a = V.inconsistency_ratio(nn.Dropout(0.5), x, seed=3)
    b = V.inconsistency_ratio(nn.Dropout(0.5), x, seed=3)
    assert a == b


def test_per_channel_variance_pools_positions() -> None:
    x = torch.randn(64, 3, 4, 4, dtype=torch.float64)
    assert V.batch_variance(x, "feature").shape == (48,)
    assert V.batch_variance(x, "channel").shape == (3,)
    r = V.inconsistency_ratio(nn.Dropout2d(0.5), x, per="channel")
    assert 0 < r < 1


@pytest.mark.parametrize(
    "call",
    [
        lambda p: V.dropout_ratio(1.0, 0.0, p),
        lambda p: V.ratio_nonresidual(p),
        lambda p: V.ratio_residual(p, 1.0),
        lambda p: V.variance_at_h4(0.0, 1.0, p, 4),
    ],
)
@pytest.mark.parametrize("bad", [-0.5, 1.0, 2.0])
def test_bad_p_is_rejected_with_the_valid_range(call, bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        call(bad)


def test_formulas_accept_arrays() -> None:
    import numpy as np

    p = np.array([0.1, 0.5])
    assert V.ratio_nonresidual(p).shape == (2,)
    assert math.isclose(V.ratio_nonresidual(0.0), 1.0)


def test_masks_are_independent_of_inputs_drawn_with_the_same_seed() -> None:
    """Seeding masks and data with the same seed correlates them; inconsistency_ratio avoids it."""
    torch.manual_seed(0)
    x = torch.randn(BATCH, 64, dtype=torch.float64) * 1.5 + 0.8
    assert V.inconsistency_ratio(nn.Dropout(0.5), x, seed=0) == pytest.approx(
        V.dropout_ratio(1.5**2, 0.8, 0.5), rel=0.02
    )


def test_uniform_dropout_ratio_matches_measurement() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20_000, 64, generator=g, dtype=torch.float64) + 1.0
    measured = V.inconsistency_ratio(UniformDropout(0.8), x)
    assert measured == pytest.approx(V.uniform_dropout_ratio(1.0, 1.0, 0.8), rel=0.02)


def test_noise_matched_p_adds_the_noise_of_the_other_place():
    """p/q here equals ratio * p/q there (Eq. 6); a ratio of 1 returns the same p."""
    assert V.noise_matched_p(0.1, 1.0) == pytest.approx(0.1)
    for p_other, ratio in ((0.1, 24.6), (0.5, 3.0), (0.1, 1 / 24.6)):
        p = V.noise_matched_p(p_other, ratio)
        assert p / (1 - p) == pytest.approx(ratio * p_other / (1 - p_other))
    assert V.noise_matched_p(0.1, 24.6) == pytest.approx(0.732, abs=1e-3)
