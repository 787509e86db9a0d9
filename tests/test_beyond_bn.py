"""Chapter 6's library support: the variance shift at BN, GroupNorm and LayerNorm
(probes.norm_shift, probes.norm_after_dropout, variance.norm_output_ratio),
DropPath's shift at the next BN, moving dropout in a trained network (surgery.copy_weights),
the ViT's AdamW recipe, the chapter-6 experiments and the transformer diagrams."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from droplab import data, experiments, inconsistency, models, networks, plots, probes, surgery, sweep, train
from droplab import variance as V


@pytest.mark.parametrize("norm", models.NORMS)
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_before_a_norm_shifts_its_input_and_only_a_bn_passes_the_shift_on(norm, p):
    r = probes.norm_after_dropout(norm, p, mean=0.5, var=1.0, batch=8_192, seed=3)
    assert r.kind == norm and r.after_dropout
    assert r.input_ratio == pytest.approx(V.dropout_ratio(1.0, 0.5, p), rel=0.01)
    assert r.output_ratio == pytest.approx(V.norm_output_ratio(norm, 1.0, 0.5, p), rel=0.01 if norm == "batch" else 1e-4)
    if norm == "batch":
        assert r.output_ratio < 0.9
    else:
        assert r.output_ratio == pytest.approx(1.0, abs=1e-4)


def test_norm_output_ratio_names_the_valid_norms():
    with pytest.raises(ValueError, match="batch, group, layer"):
        V.norm_output_ratio("instance", 1.0, 0.0, 0.1)


def test_norm_shift_finds_every_norm_in_forward_order_and_leaves_the_network_as_it_was():
    torch.manual_seed(0)
    net = models.PreResNet(8, width=8, in_channels=1, norm="group", dropout_at="P4", p=0.3)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(64, 1, 28, 28)
    shifts = probes.norm_shift(net, x)
    assert [s.kind for s in shifts] == ["group"] * len(shifts)
    assert [s.depth for s in shifts] == list(range(1, len(shifts) + 1))
    assert sum(s.after_dropout for s in shifts) == len(net.blocks)          # BN2's place of every block
    assert all(s.output_ratio == pytest.approx(1.0, abs=1e-4) for s in shifts)
    assert not net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_norm_shift_keeps_bn_buffers_and_sees_a_layernorm_over_the_last_dimension():
    torch.manual_seed(1)
    bn_net = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm2d(4))
    buffers = [b.clone() for b in bn_net.buffers()]
    probes.norm_shift(bn_net, torch.randn(32, 4, 3, 3))
    assert all(torch.equal(a, b) for a, b in zip(buffers, bn_net.buffers()))
    ln_net = nn.Sequential(nn.Dropout(0.5), nn.LayerNorm(32))   # wide enough that no token loses all its values
    (r,) = probes.norm_shift(ln_net, torch.randn(1_000, 5, 32) + 1.0)
    assert r.kind == "layer" and r.input_ratio == pytest.approx(V.dropout_ratio(1.0, 1.0, 0.5), rel=0.03)
    assert r.output_ratio == pytest.approx(1.0, abs=1e-3)


def test_norm_shift_refuses_a_network_without_normalization():
    with pytest.raises(ValueError, match="no normalization layer"):
        probes.norm_shift(nn.Sequential(nn.Linear(3, 3)), torch.randn(4, 3))


def test_droppath_shifts_the_next_bn_as_element_dropout_at_p7_does():
    kw = {"depth": 4, "p": 0.5, "batch": 20_000, "seed": 4}
    path, p7 = inconsistency.shift_at_next_bn(position="P7path", **kw), inconsistency.shift_at_next_bn(position="P7", **kw)
    for layer, (a, b) in enumerate(zip(path, p7), start=1):
        assert a == pytest.approx(b, rel=0.03)
        assert a == pytest.approx(V.ratio_residual_depth(0.5, 1.0, layer), rel=0.03)
    with pytest.raises(ValueError, match="P7path"):
        inconsistency.shift_at_next_bn(position="P8", **kw)


def test_copy_weights_moves_dropout_without_changing_the_trained_function():
    torch.manual_seed(2)
    src = networks.build(networks.NetConfig(arch="vit", norm="layer", depth=2, width=16))
    src.input_stats = ([0.5], [0.25])
    for t in ("T0", "T1", "T3", "T4"):
        dst = surgery.copy_weights(src, networks.build(networks.NetConfig(arch="vit", norm="layer", depth=2, width=16,
                                                                          dropout_at=t)))
        x = torch.randn(8, 1, 28, 28)
        src.eval(), dst.eval()
        assert torch.allclose(src(x), dst(x)) and dst.input_stats == src.input_stats
    with pytest.raises(ValueError, match="more than where dropout sits"):
        surgery.copy_weights(src, networks.build(networks.NetConfig(arch="vit", norm="layer", depth=3, width=16)))


def test_recipe_knows_its_optimizers_and_adamw_trains():
    with pytest.raises(ValueError, match="sgd, adamw"):
        train.Recipe(optimizer="adam")
    d = data.synthetic("train", n=128)
    torch.manual_seed(3)
    net = networks.build(networks.NetConfig(arch="vit", norm="layer", depth=1, width=16, in_channels=d.images.shape[1]))
    hist = train.fit(net, d, None, train.Recipe(epochs=3, batch_size=32, lr=3e-3, weight_decay=0.05, augment=False,
                                                optimizer="adamw"), progress=False)
    assert hist.train_loss[-1] < hist.train_loss[0]


def test_chapter_6_experiments_build_what_they_name():
    norm = experiments.spec("norm", "group-P4", "class")
    assert (norm.net.norm, norm.net.dropout_at) == ("group", "P4")
    assert experiments.get("norm").config("group-P6").baseline == "group-none"
    vit = experiments.spec("vit", "T1", "class")
    assert (vit.net.arch, vit.net.norm, vit.recipe.optimizer) == ("vit", "layer", "adamw")
    early = {c: experiments.spec("early", c, "class") for c in ("P6-early10", "underfit-P6-early10", "underfit-none")}
    assert early["P6-early10"].recipe.dropout_epochs == 10 and early["P6-early10"].net.width == 16
    assert early["underfit-P6-early10"].net.width == 8 and early["underfit-P6-early10"].recipe.augment
    assert early["underfit-none"].recipe.dropout_epochs is None
    assert experiments.spec("residual-p", "P7path-p0.1", "class").net.dropout_at == "P7path"


def test_train_one_trains_the_network_a_record_describes(tmp_path):
    run = experiments.train_one("vit", "T3", seed=0, scale="smoke", dataset="synthetic", device="cpu")
    assert isinstance(run.model.blocks[0].mlp.branch[3], nn.Dropout) and run.spec == experiments.spec(
        "vit", "T3", "smoke", "synthetic")
    rec = sweep.run_one("vit", "T3", 0, scale="smoke", dataset="synthetic", results_dir=tmp_path, device="cpu")
    assert rec["history"]["train_loss"] == run.history.train_loss
    assert rec["final_train_acc"] == pytest.approx(train.evaluate(run.model, run.train)[1])


@pytest.mark.parametrize("kind, names", [("attention", ["T0", "T1", "T2"]), ("mlp", ["T3", "T4"])])
def test_transformer_diagrams_label_the_t_positions(kind, names):
    drawn = plots.texts(plots.position_diagram(kind, highlight=names))
    assert [t for t in drawn if t.startswith("T") and t[1:].isdigit()] == names
    assert "LN" in drawn and "+" in drawn
    with pytest.raises(ValueError, match="no guideline"):
        plots.position_diagram(kind, highlight="guideline")
