"""droplab.train: the fast training path learns, repeats, survives divergence, recalibrates BN;
per-sample losses and gradient norms with dropout on (per_sample_losses, chapter 4)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from droplab import data, models, repro, train


def test_fit_learns_the_synthetic_set(synthetic):
    torch.manual_seed(0)
    model = models.MLP(hidden=(64,))
    hist = train.fit(model, *synthetic, epochs=2, batch_size=64, lr=0.05, warmup_epochs=0.2,
                     flip=False, device="cpu", progress=False)
    assert hist.epochs_run == 2 and not hist.diverged
    assert hist.final_test_acc > 0.5                      # chance is 0.1
    assert hist.test_acc[-1] == pytest.approx(train.evaluate(model, synthetic[1])[1])


def test_same_seed_gives_the_same_history(synthetic, small_resnet):
    small = data.subset(synthetic[0], 256), data.subset(synthetic[1], 128)
    runs = [train.fit(small_resnet(dropout_at="P6"), *small, epochs=1, batch_size=64, seed=3,
                      device="cpu", progress=False).to_dict() for _ in range(2)]
    for r in runs:
        r.pop("seconds")
    assert runs[0] == runs[1]


def test_a_diverging_run_is_reported_not_raised(synthetic, small_resnet):
    small = data.subset(synthetic[0], 256), data.subset(synthetic[1], 128)
    hist = train.fit(small_resnet(), *small, epochs=3, batch_size=64, lr=1e6, warmup_epochs=0,
                     device="cpu", progress=False)
    assert hist.diverged and hist.epochs_run < 3
    assert math.isnan(hist.final_test_acc)
    json.dumps(hist.to_dict(), allow_nan=False)          # a record can still be written


class MakesNaN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


def test_a_model_producing_nan_is_reported_as_diverged(synthetic):
    hist = train.fit(MakesNaN(), *synthetic, epochs=2, device="cpu", progress=False)
    assert hist.diverged and hist.epochs_run == 1


def test_recalibrate_bn_measures_statistics_with_dropout_off():
    # Dropout -> BN: with dropout on, BN would see a variance inflated by about 1/(1-p) (Li et al. 2019).
    model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm2d(3))
    x = torch.randn(512, 3, 4, 4) * 2 + 1
    labels = torch.zeros(512, dtype=torch.long)
    model[1].momentum = 0.3
    train.recalibrate_bn(model, (x, labels), batch_size=128)
    bn = model[1]
    assert bn.momentum == 0.3 and not model.training
    assert torch.allclose(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, x.var(dim=(0, 2, 3)), rtol=0.02)   # ~4, not ~10


def test_recalibrate_bn_changes_the_running_stats_of_a_network(synthetic, small_resnet):
    model = small_resnet(dropout_at="P6")
    before = model.blocks[0].branch[0].running_mean.clone()
    train.recalibrate_bn(model, synthetic[0], num_batches=2)
    assert not torch.equal(before, model.blocks[0].branch[0].running_mean)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_h7_loss_is_the_negative_log_of_the_dropped_probabilities():
    model = models.PreResNet(8, head_dropout_at="H7")
    probs = torch.tensor([[0.7, 0.3], [0.0, 1.2]])
    y = torch.tensor([0, 0])
    loss = train.criterion(model)(probs, y)
    assert loss.item() == pytest.approx((-math.log(0.7) - math.log(train.EPS)) / 2, rel=1e-5)
    assert torch.isfinite(loss)                    # a dropped correct class: large, finite


def test_other_models_use_cross_entropy_on_logits():
    logits = torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    loss = train.criterion(models.PreResNet(8, head_dropout_at="H5"))(logits, y)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item())


def test_fit_trains_an_h7_model(synthetic, small_resnet):
    p = 0.1
    small = data.subset(synthetic[0], 256), data.subset(synthetic[1], 128)
    model = small_resnet(head_dropout_at="H7", p=p)
    hist = train.fit(model, *small, epochs=1, batch_size=64, device="cpu", progress=False)
    assert not hist.diverged and hist.epochs_run == 1 and 0 <= hist.test_acc[0] <= 1
    # In training a share p of the 256 samples has its correct class dropped and pays -log(EPS) = 27.6;
    # the others pay -log(y_c / q), about log(10 q) for a net still near chance: 4.7 in all, where
    # cross-entropy on the probabilities, or dropout left off, would give log 10 = 2.3.
    drop_loss = -math.log(train.EPS)
    expected = p * drop_loss + (1 - p) * math.log(10 * (1 - p))
    assert hist.train_loss[0] == pytest.approx(expected, abs=3 * drop_loss * math.sqrt(p * (1 - p) / 256))
    # evaluation has dropout off, so no correct class is dropped: the test loss pays no -log(EPS)
    assert hist.test_loss[0] < math.log(10) + p * drop_loss / 2
    assert (hist.test_loss[0], hist.test_acc[0]) == pytest.approx(train.evaluate(model, small[1]))


def test_warm_up_then_cosine_decay_to_zero():
    f = [train.lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[9:])) and f[-1] < 0.01
    assert train.lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)


def test_eval_every_skips_test_epochs(synthetic):
    small = data.subset(synthetic[0], 128), data.subset(synthetic[1], 64)
    hist = train.fit(models.MLP(hidden=(8,)), *small, epochs=3, batch_size=64, eval_every=2,
                     device="cpu", progress=False)
    assert math.isnan(hist.test_acc[0]) and not math.isnan(hist.test_acc[1]) and not math.isnan(hist.test_acc[2])
    assert train.History.from_dict(hist.to_dict()).epochs_run == 3


def test_bad_schedule_says_what_is_valid(synthetic):
    with pytest.raises(ValueError, match="cosine, linear"):
        train.fit(models.MLP(hidden=(8,)), *synthetic, epochs=1, schedule="step", progress=False)


def test_the_fast_path_uses_bf16_only_where_the_cpu_has_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(train, "native_bf16", lambda dev: False)
    emulated = train.fast_path(train.Recipe(), cpu)
    assert (emulated.precision, emulated.channels_last) == ("fp32", False)
    assert "no native bf16" in emulated.reason
    monkeypatch.setattr(train, "native_bf16", lambda dev: True)
    native = train.fast_path(train.Recipe(), cpu)
    assert (native.precision, native.channels_last) == ("bf16", True)
    forced = train.fast_path(train.Recipe(precision="fp32", channels_last=False), cpu)
    assert (forced.precision, forced.channels_last, forced.reason) == ("fp32", False, "set by the recipe")


def test_bf16_training_learns_and_says_so_in_its_history(synthetic):
    torch.manual_seed(0)
    model = models.MLP(hidden=(64,))
    hist = train.fit(model, *synthetic, epochs=2, batch_size=64, lr=0.05, warmup_epochs=0.2, flip=False,
                     precision="bf16", device="cpu", progress=False)
    assert hist.precision == "bf16" and hist.to_dict()["precision"] == "bf16"
    assert hist.final_test_acc > 0.5                      # chance is 0.1
    assert train.History.from_dict(hist.to_dict()).precision == "bf16"


def test_a_recipe_and_keyword_changes_are_the_same_run(synthetic, small_resnet):
    small = data.subset(synthetic[0], 256), data.subset(synthetic[1], 128)
    recipe = train.Recipe(epochs=1, batch_size=64, lr=0.05, augment=False)
    a = train.fit(small_resnet(), *small, recipe, device="cpu", progress=False)
    b = train.fit(small_resnet(), *small, 1, batch_size=64, lr=0.05, augment=False, device="cpu", progress=False)
    assert a.train_loss == b.train_loss and a.test_acc == b.test_acc


def test_a_bad_recipe_says_what_is_valid():
    with pytest.raises(ValueError, match="valid precisions are auto, bf16, fp32"):
        train.Recipe(precision="fp16")
    with pytest.raises(TypeError, match="fields of a training Recipe are epochs, batch_size"):
        train.fit(models.MLP(hidden=(8,)), data.synthetic("train", n=64), None, 1, learning_rate=0.1)


# --- per_sample_losses: each sample's loss and gradient norm with dropout on -----------------




def test_fit_each_trains_every_config_and_seed_as_fit_would(synthetic):
    small = data.subset(synthetic[0], 128), data.subset(synthetic[1], 64)
    builders = {"none": lambda: models.MLP(in_features=28 * 28, hidden=(8,)),
                "p": lambda: models.MLP(in_features=28 * 28, hidden=(8,), p=0.5, dropout_at="hidden")}
    runs = train.fit_each(builders, *small, 1, [0, 1], progress=False, batch_size=32, flip=False)
    assert set(runs) == {(n, s) for n in builders for s in (0, 1)}
    repro.seed_everything(1)
    alone = builders["p"]()
    hist = train.fit(alone, *small, 1, seed=1, progress=False, batch_size=32, flip=False)
    assert runs["p", 1][1].train_loss == hist.train_loss and runs["p", 1][1].test_acc == hist.test_acc
    assert runs["none", 0][1].train_loss != runs["none", 1][1].train_loss


# --- early dropout (Liu et al. 2023, chapter 6): dropout on for the first k epochs only -------------

def dropout_modes_per_call(model: nn.Module) -> tuple[list[bool], list[bool]]:
    """Hooks that record, at every forward call, whether dropout and BN were in train mode."""
    drop, bn = [], []
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.register_forward_hook(lambda mod, i, o: drop.append(mod.training))
    first_bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    first_bn.register_forward_hook(lambda mod, i, o: bn.append(mod.training))
    return drop, bn


def test_early_dropout_turns_only_dropout_off_after_its_epochs(synthetic, small_resnet):
    small = data.subset(synthetic[0], 256), None
    model = small_resnet(dropout_at="P6", p=0.5)
    drop, bn = dropout_modes_per_call(model)
    blocks = len(model.blocks)
    hist = train.fit(model, *small, epochs=3, batch_size=64, dropout_epochs=1, device="cpu", progress=False)
    steps = 256 // 64
    assert hist.dropout_on == [True, False, False]
    assert drop == [True] * (steps * blocks) + [False] * (2 * steps * blocks)   # on in epoch 1 only
    assert bn == [True] * (3 * steps)                                         # BN trains throughout
    assert all(m.p == 0.5 for m in model.modules() if isinstance(m, nn.Dropout))   # the model is unchanged


def test_dropout_off_from_the_start_trains_as_the_net_without_dropout(synthetic, small_resnet):
    # Same weights (dropout has none), same batches: turned off, the dropout layers are the identity.
    small = data.subset(synthetic[0], 256), data.subset(synthetic[1], 128)
    early = train.fit(small_resnet(dropout_at="P6", p=0.5), *small, epochs=2, batch_size=64, dropout_epochs=0,
                      seed=1, device="cpu", progress=False).to_dict()
    plain = train.fit(small_resnet(), *small, epochs=2, batch_size=64, seed=1, device="cpu", progress=False).to_dict()
    assert early.pop("dropout_on") == [False, False] and plain.pop("dropout_on") == [True, True]
    for h in (early, plain):
        h.pop("seconds")
    assert early == plain


def test_the_default_keeps_dropout_all_the_way_as_before(synthetic, small_resnet):
    small = data.subset(synthetic[0], 256), data.subset(synthetic[1], 128)
    runs = [train.fit(small_resnet(dropout_at="P6", p=0.5), *small, epochs=2, batch_size=64, seed=2,
                      device="cpu", progress=False, **kw).to_dict() for kw in ({}, {"dropout_epochs": 2})]
    for r in runs:
        r.pop("seconds")
    assert train.Recipe().dropout_epochs is None and runs[0]["dropout_on"] == [True, True]
    assert runs[0] == runs[1]


def test_history_says_which_epochs_had_dropout_and_old_records_had_it_in_all():
    hist = train.History(train_loss=[1.0, 0.5], train_acc=[0.1, 0.2], test_loss=[1.0, 0.6], test_acc=[0.1, 0.3],
                         seconds=[1.0, 1.0], dropout_on=[True, False])
    d = hist.to_dict()
    assert train.History.from_dict(d).dropout_on == [True, False]
    d.pop("dropout_on")
    assert train.History.from_dict(d).dropout_on == [True, True]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_a_bad_dropout_epochs_says_what_it_is(bad):
    with pytest.raises(ValueError, match="early dropout"):
        train.Recipe(dropout_epochs=bad)


def test_predict_builds_no_autograd_graph():
    """Chapters call predict on whole test sets outside no_grad: a graph would hold every
    activation of the pass in memory."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    out = train.predict(net, (torch.rand(5, 1, 2, 2), torch.zeros(5, dtype=torch.long)))
    assert out.shape == (5, 3) and not out.requires_grad and out.grad_fn is None
