"""The helpers chapter 5 (folk claims, tested) added to droplab, tested on the claims they support:
droplab.metrics, droplab.data.class_split, droplab.models.insert_dropout / replace_classifier,
droplab.train.gradient_noise."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from droplab import data, metrics, models, train


# --------------------------------------------------------------------------- metrics.auroc


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


# --------------------------------------------------------------------------- verdict rule


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
    unresolved = lambda x: f"unresolved (smallest detectable effect {x})"  # noqa: E731
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


# --------------------------------------------------------------------------- data.class_split


def test_class_split_keeps_the_named_classes_and_relabels_them_in_order() -> None:
    split = data.synthetic("train", n=500)
    out = data.class_split(split, (7, 2, 5))
    expected = torch.isin(split.labels, torch.tensor([7, 2, 5]))
    assert len(out.labels) == int(expected.sum())
    assert set(out.labels.tolist()) == {0, 1, 2}
    assert torch.equal(out.images, split.images[expected])
    back = torch.tensor([7, 2, 5])[out.labels]
    assert torch.equal(back, split.labels[expected])


def test_class_split_says_which_class_is_missing() -> None:
    split = data.class_split(data.synthetic("train", n=300), (0, 1))
    with pytest.raises(ValueError, match=r"\[4\]"):
        data.class_split(split, (0, 4))
    with pytest.raises(ValueError, match="twice"):
        data.class_split(split, (0, 0))


# --------------------------------------------------------------------------- models.insert_dropout


def test_insert_dropout_after_the_first_relu_of_a_cnn_keeps_the_weights() -> None:
    torch.manual_seed(0)
    net = models.CNN(widths=(4, 8, 8))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 1, 28, 28)
    net.eval()
    y0 = net(x)
    out = models.insert_dropout(net, nn.ReLU, 0.3, index=0)
    assert out is net
    kinds = [type(m).__name__ for m in net.features]
    assert kinds[:5] == ["Conv2d", "BatchNorm2d", "ReLU", "Dropout", "MaxPool2d"]
    assert sum(isinstance(m, nn.Dropout) for m in net.modules()) == 1
    assert not net.features[3].training                      # takes the model's eval mode
    assert torch.equal(net(x), y0)                            # eval: same function, same weights
    assert sorted(v.sum().item() for v in net.state_dict().values()) == \
        sorted(v.sum().item() for v in before.values())


def test_insert_dropout_everywhere_and_in_the_head() -> None:
    net = models.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.ReLU, 0.2)
    assert sum(isinstance(m, nn.Dropout) for m in net.features) == 3
    net = models.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.Flatten, 0.2)
    assert [type(m).__name__ for m in net.head] == ["AdaptiveAvgPool2d", "Flatten", "Dropout", "Linear"]
    net = models.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.ReLU, 0.2, index=[-1])
    assert isinstance(net.features[-1], nn.Dropout)


def test_insert_dropout_explains_bad_requests() -> None:
    with pytest.raises(ValueError, match="out of range"):
        models.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.ReLU, 0.2, index=3)
    with pytest.raises(ValueError, match="no Softmax"):
        models.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.Softmax, 0.2)
    with pytest.raises(ValueError, match="drop"):
        models.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.ReLU, 1.0)


def test_replace_classifier_gives_a_fresh_last_layer_with_new_outputs() -> None:
    net = models.CNN(widths=(4, 8, 8))
    trunk = {k: v.clone() for k, v in net.features.state_dict().items()}
    models.replace_classifier(net, 5)
    assert net.head[-1].out_features == 5 and net.head[-1].in_features == 8
    assert all(torch.equal(v, trunk[k]) for k, v in net.features.state_dict().items())
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 5)


# --------------------------------------------------------------------------- train.gradient_noise


def linear_problem(n: int = 4000):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :3].sum(1) > 0).long()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 2))
    return net, (x, y)


def test_gradient_noise_falls_like_one_over_the_batch_size() -> None:
    net, d = linear_problem()
    small = train.gradient_noise(net, d, 8, num_batches=200, seed=1)
    large = train.gradient_noise(net, d, 32, num_batches=200, seed=2)
    assert small["noise"] / large["noise"] == pytest.approx(4.0, rel=0.25)


def test_dropout_adds_gradient_noise_and_the_call_changes_nothing() -> None:
    net, d = linear_problem()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    on = train.gradient_noise(net, d, 16, num_batches=200, dropout=True, seed=3)
    off = train.gradient_noise(net, d, 16, num_batches=200, dropout=False, seed=3)
    assert on["noise"] > 1.2 * off["noise"]
    assert not net.training and not net[3].training             # modes restored
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    again = train.gradient_noise(net, d, 16, num_batches=200, dropout=True, seed=3)
    assert again["noise"] == on["noise"]                         # seeded: repeatable


def test_gradient_noise_restores_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    net = models.MLP(in_features=16, hidden=(8,), num_classes=2, batch_norm=True, dropout_at="after_last_bn")
    _, d = linear_problem(500)
    before = net.layers[2].running_mean.clone()
    train.gradient_noise(net, d, 16, num_batches=5)
    assert torch.equal(net.layers[2].running_mean, before)


def test_batches_drawn_without_replacement_shrink_the_noise_by_the_finite_population_factor() -> None:
    net, (x, y) = linear_problem(64)
    with_r = train.gradient_noise(net, (x, y), 32, num_batches=400, dropout=False, seed=4)
    without = train.gradient_noise(net, (x, y), 32, num_batches=400, dropout=False, seed=5, replacement=False)
    assert without["noise"] / with_r["noise"] == pytest.approx((64 - 32) / 63, rel=0.25)
    with pytest.raises(ValueError, match="larger than the data"):
        train.gradient_noise(net, (x, y), 65, replacement=False)
