"""Claims of chapters 2-4: the inconsistency ratio and Kim et al.'s Propositions 2-5 (droplab.variance),
the variance shift measured at every BN of a network (chapter 2), and the shift each dropout
position P0-P7 of a residual block puts on the first BN after it (chapter 3).

Tolerances were measured (see the module tests' docstrings): at batch 2e4 and
width 128, prop3 lands within 0.5% of the formulas over seeds; the tests
allow 2%.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from droplab import models
from droplab import variance as V
from droplab.dropout import Dropout, UniformDropout

BATCH = 20_000
SHIFT_N = 40_000     # samples of the bn_variance_shift tests
BLOCK_BATCH = 6_000  # batch of the tests of the shift at the next BN of a residual block


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


def test_uniform_dropout_ratio_matches_measurement() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20_000, 64, generator=g, dtype=torch.float64) + 1.0
    measured = V.inconsistency_ratio(UniformDropout(0.8), x)
    assert measured == pytest.approx(V.uniform_dropout_ratio(1.0, 1.0, 0.8), rel=0.02)


# --- bn_variance_shift: the shift at every BN of a network -----------------------------------

def _fit_running_stats(model: nn.Module, x: torch.Tensor) -> None:
    """One train-mode pass with momentum None: the running statistics become the batch's."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)


def test_no_shift_when_the_running_statistics_are_those_of_the_test_data() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHIFT_N, 4, generator=g, dtype=torch.float64) * 3 + 1
    bn = nn.Sequential(nn.BatchNorm1d(4, dtype=torch.float64))
    _fit_running_stats(bn, x)
    (shift,) = V.bn_variance_shift(bn, x)
    # running_var is the unbiased estimate, the measured one is biased: ratio (n-1)/n
    assert shift.ratio == pytest.approx((SHIFT_N - 1) / SHIFT_N, abs=1e-6)
    assert torch.allclose(shift.input_mean, shift.running_mean, atol=1e-9)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_before_bn_shifts_its_input_by_eq6(p: float) -> None:
    g = torch.Generator().manual_seed(1)
    mean, std = 0.7, 1.3
    x = torch.randn(SHIFT_N, 8, generator=g, dtype=torch.float64) * std + mean
    net = nn.Sequential(nn.Dropout(p), nn.BatchNorm1d(8, dtype=torch.float64))
    torch.manual_seed(2)
    _fit_running_stats(net, x)              # training: dropout on
    (shift,) = V.bn_variance_shift(net, x)  # test: dropout off
    assert shift.ratio == pytest.approx(V.dropout_ratio(std**2, mean, p), rel=0.03)
    assert shift.ratio < 1


def test_with_dropout_kept_on_there_is_no_shift() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(SHIFT_N, 8, generator=g, dtype=torch.float64) + 0.5
    net = nn.Sequential(nn.Dropout(0.3), nn.BatchNorm1d(8, dtype=torch.float64))
    torch.manual_seed(4)
    _fit_running_stats(net, x)
    (shift,) = V.bn_variance_shift(net, x, dropout=True)
    assert shift.ratio == pytest.approx(1.0, rel=0.03)


def test_layers_come_in_forward_order_and_the_model_is_left_as_it_was() -> None:
    torch.manual_seed(0)
    cnn = models.CNN(widths=(4, 8), convs_per_stage=2, p=0.2, dropout_at="before_bn")
    x = torch.randn(64, 1, 28, 28)
    cnn.train()
    with torch.no_grad():
        cnn(x)
    before = [b.clone() for b in cnn.buffers()]
    shifts = V.bn_variance_shift(cnn, x, batch_size=16)
    bn_names = [name for name, m in cnn.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert [s.name for s in shifts] == bn_names
    assert [s.depth for s in shifts] == list(range(1, len(bn_names) + 1))
    assert all(s.input_var.shape == s.running_var.shape for s in shifts)
    assert cnn.training and all(m.training for m in cnn.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, cnn.buffers()))


def test_chunked_statistics_equal_one_pass_statistics() -> None:
    torch.manual_seed(0)
    cnn = models.CNN(widths=(4, 8), convs_per_stage=1, dropout_at=None)
    x = torch.randn(100, 1, 28, 28)
    whole = V.bn_variance_shift(cnn, x, batch_size=100)
    parts = V.bn_variance_shift(cnn, x, batch_size=7)
    for a, b in zip(whole, parts):
        assert torch.allclose(a.input_var, b.input_var, rtol=1e-9)
        assert torch.allclose(a.input_mean, b.input_mean, atol=1e-12)


def test_a_model_without_bn_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="no batch normalization"):
        V.bn_variance_shift(nn.Sequential(nn.Linear(3, 3)), torch.randn(5, 3))


# --- bn_input_ratios / shift_at_next_bn / NEXT_BN: the shift at the next BN of a block -------

def test_next_bn_names_a_bn_for_every_position() -> None:
    assert set(V.NEXT_BN) == set(V.POSITIONS)
    assert {V.NEXT_BN[p] for p in ("P0", "P1")} == {"BN1"}
    assert {V.NEXT_BN[p] for p in ("P2", "P3", "P4")} == {"BN2"}
    assert {V.NEXT_BN[p] for p in ("P5", "P6", "P7")} == {"out"}


def test_block_outputs_are_those_of_stacked_blocks() -> None:
    ratios = V.bn_input_ratios(3, "P6", p=0.5, batch=BLOCK_BATCH, seed=4)
    assert ratios["out"] == V.stacked_blocks(3, "P6", p=0.5, batch=BLOCK_BATCH, seed=4, bn="train")
    assert set(ratios) == {"BN1", "BN2", "out"} and all(len(v) == 3 for v in ratios.values())


def test_the_bn_after_a_p6_dropout_follows_eq_31() -> None:
    measured = V.shift_at_next_bn(3, "P6", p=0.5, batch=BLOCK_BATCH)
    expected = [V.ratio_residual_depth(0.5, 1.0, d) for d in (1, 2, 3)]
    assert measured == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("position", ["P2", "P3", "P4"])
def test_p2_to_p4_shift_bn2_by_the_nonresidual_ratio(position: str) -> None:
    measured = V.shift_at_next_bn(3, position, p=0.5, batch=BLOCK_BATCH)
    assert measured == pytest.approx([V.ratio_nonresidual(0.5)] * 3, abs=0.03)


def test_batch_statistics_hide_a_p2_dropout_from_the_block_output() -> None:
    ratios = V.bn_input_ratios(2, "P2", p=0.5, batch=BLOCK_BATCH)
    assert all(r > 0.97 for r in ratios["out"])
    assert all(r < 0.45 for r in ratios["BN2"])


def test_p6_shift_is_closer_to_one_than_p1_to_p4() -> None:
    p6 = V.shift_at_next_bn(4, "P6", p=0.5, batch=BLOCK_BATCH)
    for position in ("P1", "P2", "P4"):
        other = V.shift_at_next_bn(4, position, p=0.5, batch=BLOCK_BATCH)
        assert all(a > b for a, b in zip(p6, other)), (position, p6, other)


def test_p0_compounds_the_shift_at_bn1() -> None:
    p0 = V.shift_at_next_bn(4, "P0", p=0.5, batch=BLOCK_BATCH)
    assert p0[0] == pytest.approx(0.5, abs=0.02)  # dropout on a zero-mean input: Delta = q
    assert all(b < a for a, b in zip(p0, p0[1:]))
    assert p0[-1] < 0.2


def test_without_dropout_no_bn_input_is_shifted() -> None:
    ratios = V.bn_input_ratios(2, "P6", p=0.0, batch=2_000)
    assert all(r == pytest.approx(1.0, abs=1e-12) for v in ratios.values() for r in v)


def test_bn_input_ratios_leave_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    V.bn_input_ratios(2, "P1", batch=1_000)
    assert torch.equal(before, torch.random.get_rng_state())


def test_bn_input_ratios_refuse_an_unknown_position_or_p() -> None:
    with pytest.raises(ValueError, match="P0, P1"):
        V.bn_input_ratios(2, "P8", batch=100)
    with pytest.raises(ValueError, match="DROPPING"):
        V.shift_at_next_bn(2, "P6", p=1.0, batch=100)
