"""Claims of chapter 2 (BN and the variance shift) that live in the library:
droplab.variance.bn_variance_shift and the uniform-noise dropout (Li et al. 2019)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from droplab import dropout as D
from droplab import models
from droplab import variance as V

N = 40_000


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
    x = torch.randn(N, 4, generator=g, dtype=torch.float64) * 3 + 1
    bn = nn.Sequential(nn.BatchNorm1d(4, dtype=torch.float64))
    _fit_running_stats(bn, x)
    (shift,) = V.bn_variance_shift(bn, x)
    # running_var is the unbiased estimate, the measured one is biased: ratio (n-1)/n
    assert shift.ratio == pytest.approx((N - 1) / N, abs=1e-6)
    assert torch.allclose(shift.input_mean, shift.running_mean, atol=1e-9)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_before_bn_shifts_its_input_by_eq6(p: float) -> None:
    g = torch.Generator().manual_seed(1)
    mean, std = 0.7, 1.3
    x = torch.randn(N, 8, generator=g, dtype=torch.float64) * std + mean
    net = nn.Sequential(nn.Dropout(p), nn.BatchNorm1d(8, dtype=torch.float64))
    torch.manual_seed(2)
    _fit_running_stats(net, x)              # training: dropout on
    (shift,) = V.bn_variance_shift(net, x)  # test: dropout off
    assert shift.ratio == pytest.approx(V.dropout_ratio(std**2, mean, p), rel=0.03)
    assert shift.ratio < 1


def test_with_dropout_kept_on_there_is_no_shift() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 8, generator=g, dtype=torch.float64) + 0.5
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


def test_uniform_dropout_keeps_the_mean_and_has_the_formula_variance() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=g, dtype=torch.float64) * 0.8 + 1.5
    beta = 0.6
    y = D.UniformDropout(beta, generator=torch.Generator().manual_seed(1)).train()(x)
    assert y.mean().item() == pytest.approx(x.mean().item(), abs=0.01)
    assert y.var().item() == pytest.approx(D.uniform_dropout_variance(x.var().item(), x.mean().item(), beta), rel=0.01)
    assert torch.equal(D.UniformDropout(beta).eval()(x), x)


def test_uniform_dropout_counts_as_a_dropout_layer() -> None:
    layer = D.UniformDropout(0.5)
    assert D.is_dropout(layer)
    net = nn.Sequential(nn.Linear(2, 2), layer).eval()
    D.set_dropout(net, True)
    assert layer.training and not net[0].training


def test_uniform_dropout_ratio_matches_measurement() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20_000, 64, generator=g, dtype=torch.float64) + 1.0
    measured = V.inconsistency_ratio(D.UniformDropout(0.8), x)
    assert measured == pytest.approx(V.uniform_dropout_ratio(1.0, 1.0, 0.8), rel=0.02)


def test_matched_beta_gives_the_shift_of_dropout() -> None:
    for p in (0.05, 0.1, 0.25):
        beta = D.matched_beta(p)
        assert V.uniform_dropout_ratio(2.0, 0.7, beta) == pytest.approx(V.dropout_ratio(2.0, 0.7, p), rel=1e-12)
    assert D.matched_beta(0.25) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at most"):
        D.matched_beta(0.3)
    with pytest.raises(ValueError, match="beta"):
        D.UniformDropout(1.5)


def test_swap_dropout_replaces_every_dropout_layer() -> None:
    cnn = models.CNN(widths=(4, 8), convs_per_stage=2, p=0.1, dropout_at="before_bn").eval()
    count = D.swap_dropout(cnn, lambda old: D.UniformDropout(D.matched_beta(old.p)))
    assert count == 4
    layers = D.dropout_modules(cnn)
    assert len(layers) == 4 and all(isinstance(m, D.UniformDropout) for m in layers)
    assert all(math.isclose(m.beta, D.matched_beta(0.1)) and not m.training for m in layers)
