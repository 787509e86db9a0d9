"""droplab.probes: measurements inside a network that train nothing and leave it as it was:
neighbour recovery (chapter 1), the variance shift at every BN (chapters 2 and 5), per-sample
losses with dropout on (chapter 4), gradient noise (chapter 5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from droplab import data, models, probes, surgery, train
from droplab import variance as V
from droplab.dropout import seeded_masks

SHIFT_N = 40_000     # samples of the bn_variance_shift tests


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def images():
    return data.synthetic("test", n=96)


# --- neighbour_recovery: what element and spatial dropout leave to the neighbours -----------

def test_neighbour_recovery_spatial_dropout_recovers_nothing() -> None:
    x = torch.rand(20, 4, 12, 12, generator=gen(1))
    out = probes.neighbour_recovery(x, 0.4, spatial=True, generator=gen(2))
    assert out["recovered"] == pytest.approx(0.0, abs=1e-12)
    assert out["unrecoverable"] == pytest.approx(out["dropped"])


def test_neighbour_recovery_on_smooth_maps_recovers_most_of_the_dropped_variance() -> None:
    base = torch.rand(50, 3, 4, 4, generator=gen(3))
    smooth = torch.nn.functional.interpolate(base, size=(16, 16), mode="bilinear", align_corners=False)
    out = probes.neighbour_recovery(smooth, 0.3, generator=gen(4))
    assert out["dropped"] == pytest.approx(0.3, abs=0.03)
    assert out["recovered"] > 0.8
    assert out["unrecoverable"] < 0.1


def test_neighbour_recovery_on_white_noise_recovers_almost_nothing() -> None:
    noise = torch.randn(50, 3, 16, 16, generator=gen(5))
    out = probes.neighbour_recovery(noise, 0.3, generator=gen(6))
    assert abs(out["recovered"]) < 0.02
    assert out["unrecoverable"] == pytest.approx(out["dropped"], rel=0.03)


def test_neighbour_recovery_checks_its_input() -> None:
    with pytest.raises(ValueError, match="N, C, H, W"):
        probes.neighbour_recovery(torch.rand(10, 4), 0.5)
    with pytest.raises(ValueError, match="probability of dropping"):
        probes.neighbour_recovery(torch.rand(2, 2, 4, 4), 1.0)


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
    (shift,) = probes.bn_variance_shift(bn, x)
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
    (shift,) = probes.bn_variance_shift(net, x)  # test: dropout off
    assert shift.ratio == pytest.approx(V.dropout_ratio(std**2, mean, p), rel=0.03)
    assert shift.ratio < 1


def test_with_dropout_kept_on_there_is_no_shift() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(SHIFT_N, 8, generator=g, dtype=torch.float64) + 0.5
    net = nn.Sequential(nn.Dropout(0.3), nn.BatchNorm1d(8, dtype=torch.float64))
    torch.manual_seed(4)
    _fit_running_stats(net, x)
    (shift,) = probes.bn_variance_shift(net, x, dropout=True)
    assert shift.ratio == pytest.approx(1.0, rel=0.03)


def test_layers_come_in_forward_order_and_the_model_is_left_as_it_was() -> None:
    torch.manual_seed(0)
    cnn = models.CNN(widths=(4, 8), convs_per_stage=2, p=0.2, dropout_at="before_bn")
    x = torch.randn(64, 1, 28, 28)
    cnn.train()
    with torch.no_grad():
        cnn(x)
    before = [b.clone() for b in cnn.buffers()]
    shifts = probes.bn_variance_shift(cnn, x, batch_size=16)
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
    whole = probes.bn_variance_shift(cnn, x, batch_size=100)
    parts = probes.bn_variance_shift(cnn, x, batch_size=7)
    for a, b in zip(whole, parts):
        assert torch.allclose(a.input_var, b.input_var, rtol=1e-9)
        assert torch.allclose(a.input_mean, b.input_mean, atol=1e-12)


def test_a_model_without_bn_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="no batch normalization"):
        probes.bn_variance_shift(nn.Sequential(nn.Linear(3, 3)), torch.randn(5, 3))


# --- per_sample_losses: each sample's loss and gradient norm with dropout on -----------------

def test_without_dropout_every_draw_is_the_eval_loss(images, trained_like):
    model = trained_like()
    r = probes.per_sample_losses(model, images, samples=3, stats=([0.5], [0.25]))
    n = len(images.labels)
    assert r["loss"].shape == (3, n) and r["grad_norm"].shape == (3, n)
    assert r["correct"].shape == (n,) and r["correct"].dtype == torch.bool
    for t in range(3):
        assert torch.allclose(r["loss"][t], r["eval_loss"], atol=1e-5)
    x, y = train.to_device(images, torch.device("cpu"), ([0.5], [0.25]))
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, reduction="none")
    assert torch.allclose(r["eval_loss"], expected, atol=1e-5)


def test_gradient_norm_is_that_of_each_sample_alone(images, trained_like):
    model = surgery.with_head_dropout(trained_like(), "H5", p=0.3)
    stats = ([0.5], [0.25])
    r = probes.per_sample_losses(model, images, samples=1, stats=stats, seed=4)
    x, y = train.to_device(images, torch.device("cpu"), stats)
    model.eval()
    with torch.no_grad():
        h = model.features(x)
    next(m for m in model.head if isinstance(m, nn.Dropout)).train()
    with seeded_masks(4):                # the same masks: the same seed, the same single batch
        h.requires_grad_(True)
        loss = F.cross_entropy(model.head(h), y, reduction="none")
    assert torch.allclose(loss.detach(), r["loss"][0], atol=1e-5)
    for i in range(5):
        (g,) = torch.autograd.grad(loss[i], h, retain_graph=True)
        assert g[torch.arange(len(y)) != i].abs().max() == 0          # samples do not interact
        assert g[i].norm().item() == pytest.approx(r["grad_norm"][0, i].item(), rel=1e-5)


def test_h7_drops_the_correct_class_at_rate_p_with_a_clamped_loss_and_no_gradient(images, trained_like):
    p = 0.3
    stats = ([0.5], [0.25])
    model = surgery.with_head_dropout(trained_like(), "H7", p=p)
    r = probes.per_sample_losses(model, images, samples=40, stats=stats)
    correct = r["correct"]
    x, y = train.to_device(images, torch.device("cpu"), stats)
    with torch.no_grad():
        assert torch.equal(correct, model.eval()(x).argmax(1) == y)   # the eval-mode predictions
    # the untrained net predicts one class for all 96 images, 12 of which have it: enough to measure a rate
    assert int(correct.sum()) >= 10
    big = r["loss"] > math.log(10)
    dropped = (r["loss"] - (-math.log(train.EPS))).abs() < 1e-3
    # a correct prediction has y_c >= 1/10 (y_c / q once kept): its loss exceeds log 10 exactly when y_c is dropped
    assert torch.equal(big[:, correct], dropped[:, correct])
    share = big[:, correct].float().mean().item()
    n = 40 * int(correct.sum())
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert dropped.float().mean().item() == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / r["loss"].numel()))
    assert torch.all(r["grad_norm"][dropped] == 0)


def test_per_sample_draws_differ_and_repeat_with_the_seed_without_touching_the_global_rng(images, trained_like):
    model = surgery.with_head_dropout(trained_like(), "H4", p=0.5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = probes.per_sample_losses(model, images, samples=2, seed=1, stats=([0.5], [0.25]))
    assert torch.equal(torch.get_rng_state(), state)
    b = probes.per_sample_losses(model, images, samples=2, seed=1, stats=([0.5], [0.25]))
    assert torch.equal(a["loss"], b["loss"])
    assert not torch.equal(a["loss"][0], a["loss"][1])


def test_per_sample_losses_restore_the_modes_and_need_positive_samples(images, trained_like):
    model = surgery.with_head_dropout(trained_like(), "H4", p=0.5).train()
    probes.per_sample_losses(model, images, samples=1, stats=([0.5], [0.25]))
    assert model.training and model.head[3].training
    with pytest.raises(ValueError, match="samples"):
        probes.per_sample_losses(model, images, samples=0)


# --- gradient_noise: how noisy the mini-batch gradient is, with and without dropout ----------

def linear_problem(n: int = 4000):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :3].sum(1) > 0).long()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 2))
    return net, (x, y)


def test_gradient_noise_falls_like_one_over_the_batch_size() -> None:
    net, d = linear_problem()
    small = probes.gradient_noise(net, d, 8, num_batches=200, seed=1)
    large = probes.gradient_noise(net, d, 32, num_batches=200, seed=2)
    assert small["noise"] / large["noise"] == pytest.approx(4.0, rel=0.25)


def test_dropout_adds_gradient_noise_and_the_call_changes_nothing() -> None:
    net, d = linear_problem()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    on = probes.gradient_noise(net, d, 16, num_batches=200, dropout=True, seed=3)
    off = probes.gradient_noise(net, d, 16, num_batches=200, dropout=False, seed=3)
    assert on["noise"] > 1.2 * off["noise"]
    assert not net.training and not net[3].training             # modes restored
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    again = probes.gradient_noise(net, d, 16, num_batches=200, dropout=True, seed=3)
    assert again["noise"] == on["noise"]                         # seeded: repeatable


def test_gradient_noise_restores_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    net = models.MLP(in_features=16, hidden=(8,), num_classes=2, batch_norm=True, dropout_at="after_last_bn")
    _, d = linear_problem(500)
    before = net.layers[2].running_mean.clone()
    probes.gradient_noise(net, d, 16, num_batches=5)
    assert torch.equal(net.layers[2].running_mean, before)


def test_batches_drawn_without_replacement_shrink_the_noise_by_the_finite_population_factor() -> None:
    net, (x, y) = linear_problem(64)
    with_r = probes.gradient_noise(net, (x, y), 32, num_batches=400, dropout=False, seed=4)
    without = probes.gradient_noise(net, (x, y), 32, num_batches=400, dropout=False, seed=5, replacement=False)
    assert without["noise"] / with_r["noise"] == pytest.approx((64 - 32) / 63, rel=0.25)
    with pytest.raises(ValueError, match="larger than the data"):
        probes.gradient_noise(net, (x, y), 65, replacement=False)
