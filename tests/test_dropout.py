"""droplab.dropout: dropout written from scratch and the helpers of chapter 1's experiments,
and the uniform-noise dropout of chapter 2 (Li et al. 2019)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from droplab import dropout as D
from droplab import variance as V

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


# --- swapping dropout layers, forgotten scaling, MC passes, neighbour recovery --------------


def test_mc_outputs_average_to_the_weight_scaled_logits_for_a_last_layer_dropout(small_mlp) -> None:
    """With dropout only before the last linear layer, E[logits] equals the eval-mode logits exactly."""
    model = small_mlp().eval()
    x = torch.rand(32, 8)
    logits = D.mc_outputs(model, x, T=4000, seed=0)
    assert logits.shape == (4000, 32, 3)
    with torch.no_grad():
        ws = model(x)
    se = logits.std(0) / 4000**0.5
    assert ((logits.mean(0) - ws).abs() < 5 * se + 1e-6).all()
    assert not model.training and not model[3].training, "modes are restored"


def test_mc_outputs_repeat_with_a_seed_and_leave_the_global_stream_alone(small_mlp) -> None:
    model = small_mlp()
    x = torch.rand(5, 8)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = D.mc_outputs(model, x, T=3, seed=7)
    assert torch.equal(torch.rand(1), expected_next), "the global stream is where it was"
    b = D.mc_outputs(model, x, T=3, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1]), "every pass draws new masks"


def test_mc_predict_train_mode_depends_on_the_batch_and_restores_the_model(small_mlp) -> None:
    model = small_mlp(batch_norm=True)
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(256, 8) + 1.0)
    model.eval()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 8) + 1.0
    whole = D.mc_predict_train_mode(model, x, T=2, seed=0)
    pairs = D.mc_predict_train_mode(model, x, T=2, batch_size=2, seed=0)
    assert whole.shape == pairs.shape == (2, 64, 3)
    assert not torch.allclose(whole, pairs, atol=1e-3), "BN uses each chunk's statistics"
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), f"{k} was not restored"
    assert not model.training


# --- uniform-noise dropout (Li et al. 2019) and swapping dropout layers ----------------------

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


def test_matched_beta_gives_the_shift_of_dropout() -> None:
    for p in (0.05, 0.1, 0.25):
        beta = D.matched_beta(p)
        assert V.uniform_dropout_ratio(2.0, 0.7, beta) == pytest.approx(V.dropout_ratio(2.0, 0.7, p), rel=1e-12)
    assert D.matched_beta(0.25) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at most"):
        D.matched_beta(0.3)
    with pytest.raises(ValueError, match="beta"):
        D.UniformDropout(1.5)




# --- the primitives the rest of droplab builds on -------------------------------------------

@pytest.mark.parametrize("layer", [nn.Dropout(0.1), nn.Dropout2d(0.1), nn.AlphaDropout(0.1), D.Dropout(0.1),
                                   D.SpatialDropout(0.1), D.UniformDropout(0.1)])
def test_is_dropout_knows_every_dropout_layer(layer: nn.Module) -> None:
    assert D.is_dropout(layer)
    assert not D.is_dropout(nn.BatchNorm1d(3)) and not D.is_dropout(nn.ReLU())


def test_check_p_names_what_it_checks() -> None:
    assert D.check_p(0.3) == 0.3
    with pytest.raises(ValueError, match=r"head_p is the probability of dropping a unit .* \[0, 1\)"):
        D.check_p(1.0, "head_p")
    with pytest.raises(ValueError, match="probability of dropping"):
        D.check_p("0.1")


def test_seeded_masks_repeat_and_leave_the_global_stream_alone() -> None:
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    with D.seeded_masks(3):
        a = torch.rand(4)
    assert torch.equal(torch.rand(1), expected_next), "the global stream is where it was"
    with D.seeded_masks(3):
        assert torch.equal(torch.rand(4), a)
    torch.manual_seed(3)
    assert not torch.equal(torch.rand(4), a), "masks come from mask_seed(seed), not from seed itself"


def test_saved_buffers_give_back_the_running_statistics() -> None:
    bn = nn.BatchNorm1d(4).train()
    before = [b.clone() for b in bn.buffers()]
    with D.saved_buffers(bn), torch.no_grad():
        bn(torch.randn(16, 4) + 3.0)
        assert not torch.equal(bn.running_mean, before[0])
    assert all(torch.equal(a, b) for a, b in zip(before, bn.buffers()))


def test_the_three_mc_readings_are_one_loop(small_mlp) -> None:
    model = small_mlp(batch_norm=True).eval()
    x = torch.randn(12, 8)
    logits = D.mc_samples(model, x, 3, seed=2, softmax=False)
    assert torch.equal(D.mc_outputs(model, x, 3, seed=2), logits)
    assert torch.allclose(D.mc_predict(model, x, 3, seed=2), logits.softmax(-1))
    trap = D.mc_samples(model, x, 3, batch_size=4, seed=2, bn="batch")
    assert torch.equal(D.mc_predict_train_mode(model, x, 3, batch_size=4, seed=2), trap)
    with pytest.raises(ValueError, match="running"):
        D.mc_samples(model, x, 3, bn="train")


# --- DropPath: the whole residual branch of a sample (torchvision's StochasticDepth, chapter 6) ----

def test_drop_path_is_the_identity_in_eval_and_counts_as_dropout() -> None:
    layer = D.drop_path(0.5).eval()
    x = torch.randn(8, 3, 4, 4)
    assert torch.equal(layer(x), x)
    assert D.is_dropout(layer) and type(layer).__name__ == "StochasticDepth" and layer.mode == "row"
    net = nn.Sequential(nn.BatchNorm2d(3), layer).eval()
    D.set_dropout(net, True)
    assert layer.training and not net[0].training           # switched like any dropout layer
    with D.mc_dropout(net.train()):
        assert layer.training and not net[0].training
    assert D.dropout_modules(net) == [layer]


def test_drop_path_drops_or_keeps_each_sample_whole_with_share_p() -> None:
    p, n = 0.3, 4000
    torch.manual_seed(0)
    x = torch.rand(n, 2, 3, 3) + 0.1                          # no zeros of its own
    y = D.drop_path(p).train()(x)
    ratio = (y / x).flatten(1)
    dropped = (ratio == 0).all(1)
    kept = torch.isclose(ratio, torch.full_like(ratio, 1 / (1 - p))).all(1)
    assert bool((dropped | kept).all())                      # every row is 0 or x / q, never mixed
    assert dropped.float().mean().item() == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))


def test_drop_path_rejects_a_keep_probability_of_zero() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        D.drop_path(1.0)


def test_importing_the_networks_does_not_import_torchvision() -> None:
    import subprocess
    import sys
    code = "import sys, droplab.blocks, droplab.networks, droplab.train; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"                             # DropPath loads it when a net has one
