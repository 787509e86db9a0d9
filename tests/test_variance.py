"""Claims of chapters 2-4: the inconsistency ratio and Kim et al.'s Propositions 2-5 (droplab.variance).

Tolerances were measured (see the module tests' docstrings): at batch 2e4 and
width 128, prop3 lands within 0.5% of the formulas over seeds; the tests
allow 2%.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from droplab import variance as V
from droplab.dropout import Dropout

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


@pytest.mark.parametrize("q", [0.5, 0.9])
def test_prop3_nonresidual_block_matches_the_formula(q: float) -> None:
    measured = V.prop3_block(1.0, 1 - q, batch=BATCH, residual=False)
    assert measured == pytest.approx(V.ratio_nonresidual(1 - q), rel=0.02)


@pytest.mark.parametrize("q", [0.5, 0.9])
@pytest.mark.parametrize("var_x0", [0.5, 2.0])
def test_prop3_residual_block_matches_the_formula(q: float, var_x0: float) -> None:
    measured = V.prop3_block(var_x0, 1 - q, batch=BATCH, residual=True)
    assert measured == pytest.approx(V.ratio_residual(1 - q, var_x0), rel=0.02)


def test_prop3_residual_block_is_between_nonresidual_and_one() -> None:
    p = 0.5
    nonres = V.prop3_block(1.0, p, batch=BATCH, residual=False)
    res = V.prop3_block(1.0, p, batch=BATCH, residual=True)
    assert nonres < res < 1


def test_prop3_gamma_enters_as_in_the_formula() -> None:
    measured = V.prop3_block(1.0, 0.5, batch=BATCH, gamma=2.0)
    assert measured == pytest.approx(V.ratio_residual(0.5, 1.0, gamma=2.0), rel=0.02)
    assert V.ratio_residual(0.5, 1.0, gamma=2.0) < V.ratio_residual(0.5, 1.0, gamma=1.0)


@pytest.mark.parametrize("mean_w", [-0.05, 0.05])
def test_prop2_post_dropout_is_less_consistent_than_pre_dropout(mean_w: float) -> None:
    post = V.prop2_pipeline(128, mean_w, p=0.5, batch=8_000, position="post")
    pre = V.prop2_pipeline(128, mean_w, p=0.5, batch=8_000, position="pre")
    assert post < pre < 1


def test_prop2_pre_and_post_agree_for_zero_mean_weights() -> None:
    post = V.prop2_pipeline(128, 0.0, p=0.5, batch=8_000, position="post")
    pre = V.prop2_pipeline(128, 0.0, p=0.5, batch=8_000, position="pre")
    assert post == pytest.approx(pre, rel=0.05)
    assert pre == pytest.approx(V.ratio_nonresidual(0.5), rel=0.05)


def test_stacked_p6_blocks_follow_eqs_26_27() -> None:
    deltas = V.stacked_blocks(3, "P6", p=0.5, batch=10_000)
    expected = [V.ratio_residual_depth(0.5, 1.0, d) for d in (1, 2, 3)]
    assert deltas == pytest.approx(expected, rel=0.03)
    assert all(d > V.ratio_nonresidual(0.5) for d in deltas)


def test_p0_compounds_the_inconsistency_with_depth() -> None:
    deltas = V.stacked_blocks(3, "P0", p=0.5, batch=10_000)
    assert deltas[0] > deltas[1] > deltas[2]
    assert deltas[2] < V.stacked_blocks(3, "P6", p=0.5, batch=10_000)[2]


def test_ratio_residual_depth_decreases_towards_the_nonresidual_ratio() -> None:
    r = [V.ratio_residual_depth(0.5, 1.0, d) for d in (1, 10, 1000)]
    assert r[0] > r[1] > r[2] > V.ratio_nonresidual(0.5)
    assert r[2] == pytest.approx(V.ratio_nonresidual(0.5), rel=0.01)
    assert V.ratio_residual_depth(0.5, 1.0, 2, gamma=[1.0, 1.0]) == V.ratio_residual_depth(0.5, 1.0, 2)


@pytest.mark.parametrize("S,mu,sigma2,p", [(16, 1.0, 1.0, 0.5), (49, 0.5, 2.0, 0.2)])
def test_gap_formulas_match_measurement(S: int, mu: float, sigma2: float, p: float) -> None:
    r = V.gap_variance_experiment(S, mu, sigma2, p, n=40_000)
    assert r["H4"] == pytest.approx(r["H4_formula"], rel=0.04)
    assert r["H5"] == pytest.approx(r["H5_formula"], rel=0.04)
    assert r["no_dropout"] == pytest.approx(sigma2 / S, rel=0.04)
    assert r["H4"] < r["H5"]  # Proposition 5


def test_dropout_before_gap_varies_less_on_a_correlated_feature_map() -> None:
    g = torch.Generator().manual_seed(0)
    common = torch.randn(32, 16, 1, 1, generator=g)
    feats = torch.relu(common + 0.5 * torch.randn(32, 16, 6, 6, generator=g) + 0.3)
    r = V.gap_variances_on(feats, 0.5, samples=64)
    assert r["H4_total"] < r["H5_total"]
    assert r["H4_noise"] == pytest.approx(r["H4_noise_formula"], rel=0.1)
    assert r["H5_noise"] == pytest.approx(r["H5_noise_formula"], rel=0.1)


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
        lambda p: V.gap_dropout_variance(0.0, 1.0, p, 4),
        lambda p: V.prop3_block(1.0, p, batch=16),
    ],
)
@pytest.mark.parametrize("bad", [-0.5, 1.0, 2.0])
def test_bad_p_is_rejected_with_the_valid_range(call, bad: float) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        call(bad)


def test_unknown_position_is_rejected() -> None:
    with pytest.raises(ValueError, match="P0, P1"):
        V.stacked_blocks(1, "P9", batch=16)


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
