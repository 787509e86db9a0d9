"""Library support of chapter 4 (dropout in the head): moving the head's dropout on a trained
network (droplab.models.with_head_dropout) and the per-sample losses and gradient norms with
dropout on (droplab.train.per_sample_losses)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from droplab import data, models, train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machine's cores are shared: one thread avoids OpenMP oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images():
    return data.synthetic("test", n=96)


def trained_like(head_conv: bool = True) -> nn.Module:
    """A small PreResNet with non-trivial BN statistics (one train-mode pass), in eval mode."""
    torch.manual_seed(0)
    model = models.PreResNet(8, in_channels=1, width=4, head_conv=head_conv)
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 1, 28, 28))
    return model.eval()


# --- with_head_dropout --------------------------------------------------------------------------

@pytest.mark.parametrize("at", ["H1", "H2", "H3", "H4", "H5", "H6", None])
def test_moving_the_head_dropout_keeps_the_trained_network(at):
    model = trained_like()
    x = torch.randn(8, 1, 28, 28)
    moved = models.with_head_dropout(model, at, p=0.3).eval()
    with torch.no_grad():
        assert torch.allclose(moved(x), model(x), atol=1e-6)
    assert sum(isinstance(m, nn.Dropout) for m in moved.head) == (0 if at is None else 1)
    assert moved.head_dropout_at == at and not moved.outputs_probabilities


def test_h7_copy_returns_the_softmax_of_the_original_logits():
    model = trained_like()
    x = torch.randn(8, 1, 28, 28)
    moved = models.with_head_dropout(model, "H7", p=0.2).eval()
    assert moved.outputs_probabilities and train.outputs_probabilities(moved)
    with torch.no_grad():
        assert torch.allclose(moved(x), model(x).softmax(1), atol=1e-6)


def test_the_dropout_sits_where_the_head_table_says():
    moved = models.with_head_dropout(trained_like(), "H4", p=0.1)
    kinds = [type(m).__name__ for m in moved.head]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Dropout", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert moved.head[3].p == 0.1


def test_the_original_model_is_left_untouched():
    model = trained_like()
    before = [t.clone() for t in model.state_dict().values()]
    moved = models.with_head_dropout(model, "H5", p=0.5)
    with torch.no_grad():
        for t in moved.parameters():
            t.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


@pytest.mark.parametrize("at", ["H1", "H2", "H3"])
def test_h1_to_h3_need_a_head_conv(at):
    with pytest.raises(ValueError, match="head_conv=True"):
        models.with_head_dropout(trained_like(head_conv=False), at)


def test_a_head_without_conv_still_moves_between_h4_and_h7():
    model = trained_like(head_conv=False)
    moved = models.with_head_dropout(model, "H6", p=0.1).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(moved(x), model(x), atol=1e-6)


def test_bad_position_or_p_is_refused():
    with pytest.raises(ValueError, match="H1, H2"):
        models.with_head_dropout(trained_like(), "H8")
    with pytest.raises(ValueError, match="probability of dropping"):
        models.with_head_dropout(trained_like(), "H4", p=1.0)


# --- per_sample_losses --------------------------------------------------------------------------

def test_without_dropout_every_draw_is_the_eval_loss(images):
    model = trained_like()
    r = train.per_sample_losses(model, images, samples=3, stats=([0.5], [0.25]))
    n = len(images.labels)
    assert r["loss"].shape == (3, n) and r["grad_norm"].shape == (3, n)
    assert r["correct"].shape == (n,) and r["correct"].dtype == torch.bool
    for t in range(3):
        assert torch.allclose(r["loss"][t], r["eval_loss"], atol=1e-5)
    x, y = train.to_device(images, torch.device("cpu"), ([0.5], [0.25]))
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, reduction="none")
    assert torch.allclose(r["eval_loss"], expected, atol=1e-5)


def test_gradient_norm_is_that_of_each_sample_alone(images):
    model = models.with_head_dropout(trained_like(), "H5", p=0.3)
    stats = ([0.5], [0.25])
    r = train.per_sample_losses(model, images, samples=1, stats=stats, seed=4)
    x, y = train.to_device(images, torch.device("cpu"), stats)
    model.eval()
    with torch.no_grad():
        h = model.features(x)
    next(m for m in model.head if isinstance(m, nn.Dropout)).train()
    with torch.random.fork_rng():        # the same masks: the same seed, the same single batch
        torch.manual_seed(4)
        h.requires_grad_(True)
        loss = F.cross_entropy(model.head(h), y, reduction="none")
    assert torch.allclose(loss.detach(), r["loss"][0], atol=1e-5)
    for i in range(5):
        (g,) = torch.autograd.grad(loss[i], h, retain_graph=True)
        assert g[torch.arange(len(y)) != i].abs().max() == 0          # samples do not interact
        assert g[i].norm().item() == pytest.approx(r["grad_norm"][0, i].item(), rel=1e-5)


def test_h7_drops_the_correct_class_at_rate_p_with_a_clamped_loss_and_no_gradient(images):
    p = 0.3
    model = models.with_head_dropout(trained_like(), "H7", p=p)
    r = train.per_sample_losses(model, images, samples=40, stats=([0.5], [0.25]))
    big = r["loss"] > math.log(10)
    # a correct prediction has y_c >= 1/10: its loss exceeds log 10 only when y_c is dropped
    share = big[:, r["correct"]].float().mean().item() if r["correct"].any() else p
    n = 40 * max(int(r["correct"].sum()), 1)
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)
    dropped = (r["loss"] - (-math.log(train.EPS))).abs() < 1e-3
    assert dropped.float().mean().item() == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / r["loss"].numel()))
    assert torch.all(r["grad_norm"][dropped] == 0)


def test_draws_differ_and_repeat_with_the_seed_without_touching_the_global_rng(images):
    model = models.with_head_dropout(trained_like(), "H4", p=0.5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = train.per_sample_losses(model, images, samples=2, seed=1, stats=([0.5], [0.25]))
    assert torch.equal(torch.get_rng_state(), state)
    b = train.per_sample_losses(model, images, samples=2, seed=1, stats=([0.5], [0.25]))
    assert torch.equal(a["loss"], b["loss"])
    assert not torch.equal(a["loss"][0], a["loss"][1])


def test_modes_are_restored_and_samples_must_be_positive(images):
    model = models.with_head_dropout(trained_like(), "H4", p=0.5).train()
    train.per_sample_losses(model, images, samples=1, stats=([0.5], [0.25]))
    assert model.training and model.head[3].training
    with pytest.raises(ValueError, match="samples"):
        train.per_sample_losses(model, images, samples=0)
