"""Claims of chapter 1 about dropout written from scratch (droplab.dropout)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from droplab import dropout as D

N = 200_000  # elements; the sampling error of a fraction is about 1e-3


def gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(N, generator=gen(1), dtype=torch.float64) * 2.0 + 1.5  # E = 1.5, Var = 4


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_drops_a_fraction_p(p: float) -> None:
    m = D.mask((N,), p, generator=gen())
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert abs((m == 0).double().mean().item() - p) < 0.005


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_from_scratch_dropout_matches_nn_dropout(x: torch.Tensor, p: float) -> None:
    ours = D.dropout(x, p, generator=gen(2))
    torch.manual_seed(2)
    theirs = nn.Dropout(p)(x)
    # same law: same fraction of zeros, the same kept values 1/q * x
    for y in (ours, theirs):
        assert abs((y == 0).double().mean().item() - p) < 0.005
        kept = y != 0
        assert torch.allclose(y[kept], x[kept] / (1 - p))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_preserves_the_mean(x: torch.Tensor, p: float) -> None:
    y = D.dropout(x, p, generator=gen(3))
    se = (D.expected_output_variance(x.var(), x.mean(), p) / N) ** 0.5
    assert abs(y.mean().item() - x.mean().item()) < 4 * se.item()


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_variance_matches_eq6(x: torch.Tensor, p: float) -> None:
    y = D.dropout(x, p, generator=gen(4))
    expected = D.expected_output_variance(x.var(), x.mean(), p).item()
    assert y.var().item() == pytest.approx(expected, rel=0.03)


def test_dropout_is_the_identity_in_eval(x: torch.Tensor) -> None:
    assert torch.equal(D.dropout(x, 0.5, training=False), x)
    layer = D.Dropout(0.5).eval()
    assert torch.equal(layer(x), x)


def test_classic_scaling_gives_the_same_expected_activation(x: torch.Tensor) -> None:
    p, q = 0.4, 0.6
    train = D.dropout(x, p, scaling="classic", generator=gen(5))
    test = D.dropout(x, p, training=False, scaling="classic")
    assert torch.allclose(test, x * q)
    assert train.mean().item() == pytest.approx(test.mean().item(), rel=0.02)


def test_forgetting_the_scaling_is_off_by_one_over_q(x: torch.Tensor) -> None:
    p, q = 0.5, 0.5
    train = D.dropout(x, p, scaling="none", generator=gen(6))
    test = D.dropout(x, p, training=False, scaling="none")
    assert test.mean().item() / train.mean().item() == pytest.approx(1 / q, rel=0.03)


def test_relu_and_dropout_commute_with_the_same_mask(x: torch.Tensor) -> None:
    """Kim et al. Proposition 1, Eq. 7, checked exactly with one mask."""
    m = D.mask(x.shape, 0.5, generator=gen(7), dtype=x.dtype)
    a = torch.relu(D.dropout(x, 0.5, mask=m))
    b = D.dropout(torch.relu(x), 0.5, mask=m)
    assert torch.equal(a, b)


def test_dropout_returns_its_mask(x: torch.Tensor) -> None:
    y, m = D.dropout(x, 0.3, generator=gen(8), return_mask=True)
    assert torch.equal(y, x * m / 0.7)


def test_spatial_dropout_drops_whole_channels() -> None:
    x = torch.ones(64, 32, 5, 5)
    y = D.SpatialDropout(0.5, generator=gen(9))(x)
    per_channel = y.flatten(2)
    assert torch.all(per_channel.amax(-1) == per_channel.amin(-1))  # a channel is all kept or all dropped
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert abs((per_channel[..., 0] == 0).float().mean().item() - 0.5) < 0.05
    assert torch.equal(D.SpatialDropout(0.5).eval()(x), x)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_p_is_rejected_with_the_valid_range(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        D.dropout(torch.ones(3), bad)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        D.Dropout(bad)


def test_unknown_scaling_is_rejected() -> None:
    with pytest.raises(ValueError, match="inverted"):
        D.dropout(torch.ones(3), 0.5, scaling="weight")  # type: ignore[arg-type]


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
        D.Dropout(0.3), nn.Linear(16, 4),
    )


def test_enable_dropout_leaves_batchnorm_in_eval() -> None:
    net = small_net().eval()
    switched = D.enable_dropout(net)
    assert len(switched) == 2 and all(m.training for m in switched)
    assert not net[1].training  # BatchNorm1d still uses running statistics


def test_mc_dropout_restores_the_modes() -> None:
    net = small_net().train()
    net[1].eval()  # an unusual mix the context must give back
    before = [m.training for m in net.modules()]
    with D.mc_dropout(net):
        assert not net[1].training and net[3].training and net[4].training
    assert [m.training for m in net.modules()] == before


def test_mc_predict_shape_and_that_passes_differ() -> None:
    net = small_net().eval()
    x = torch.randn(10, 8)
    probs = D.mc_predict(net, x, T=5, batch_size=4, seed=0)
    assert probs.shape == (5, 10, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(5, 10), atol=1e-6)
    assert not torch.allclose(probs[0], probs[1])
    assert torch.equal(probs, D.mc_predict(net, x, T=5, batch_size=4, seed=0))  # seeded: repeats
    assert not net.training and not net[3].training  # modes restored


def test_mc_uncertainty_measures_are_non_negative() -> None:
    probs = D.mc_predict(small_net().eval(), torch.randn(10, 8), T=8, seed=1)
    h = D.predictive_entropy(probs.mean(0))
    mi = D.mutual_information(probs)
    assert h.shape == mi.shape == (10,)
    assert torch.all(mi >= -1e-6) and torch.all(mi <= h + 1e-6)
