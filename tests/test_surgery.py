"""droplab.surgery: editing a built network keeps its weights and puts dropout where asked:
swapping and rescaling dropout layers (chapters 1-2), inserting dropout and a fresh classifier
(chapter 5), moving the head's dropout on a trained network (chapter 4)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from droplab import dropout as D
from droplab import models, surgery, train

# --- swapping dropout layers and the forgotten scaling ---------------------------------------

def test_replace_dropout_swaps_every_nn_dropout_and_keeps_p() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Sequential(nn.ReLU(), nn.Dropout(0.6)), nn.Dropout2d(0.2))
    assert surgery.replace_dropout(model, "none") == 2
    ours = [m for m in model.modules() if isinstance(m, D.Dropout)]
    assert [m.p for m in ours] == [0.3, 0.6]
    assert all(m.scaling == "none" for m in ours)
    assert isinstance(model[3], nn.Dropout2d), "spatial dropout is left alone"


def test_replace_dropout_keeps_the_mode(small_mlp) -> None:
    model = small_mlp().eval()
    surgery.replace_dropout(model, "classic")
    assert not model[2].training


def test_replace_dropout_rejects_an_unknown_scaling(small_mlp) -> None:
    with pytest.raises(ValueError, match="scaling"):
        surgery.replace_dropout(small_mlp(), "weights")


def test_set_scaling_repairs_the_forgotten_scaling(small_mlp) -> None:
    model = small_mlp()
    surgery.replace_dropout(model, "none")
    x = torch.rand(64, 8)
    model.eval()
    buggy = model[:3](x)
    assert surgery.set_scaling(model, "classic") == 1
    assert torch.allclose(model[:3](x), buggy * 0.5), "classic multiplies by q = 0.5 at test time"


def test_swap_dropout_replaces_every_dropout_layer() -> None:
    cnn = models.CNN(widths=(4, 8), convs_per_stage=2, p=0.1, dropout_at="before_bn").eval()
    count = surgery.swap_dropout(cnn, lambda old: D.UniformDropout(D.matched_beta(old.p)))
    assert count == 4
    layers = D.dropout_modules(cnn)
    assert len(layers) == 4 and all(isinstance(m, D.UniformDropout) for m in layers)
    assert all(math.isclose(m.beta, D.matched_beta(0.1)) and not m.training for m in layers)


# --- inserting dropout into a built network, a fresh classifier -------------------------------

def test_insert_dropout_after_the_first_relu_of_a_cnn_keeps_the_weights() -> None:
    torch.manual_seed(0)
    net = models.CNN(widths=(4, 8, 8))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 1, 28, 28)
    net.eval()
    y0 = net(x)
    out = surgery.insert_dropout(net, nn.ReLU, 0.3, index=0)
    assert out is net
    kinds = [type(m).__name__ for m in net.features]
    assert kinds[:5] == ["Conv2d", "BatchNorm2d", "ReLU", "Dropout", "MaxPool2d"]
    assert sum(isinstance(m, nn.Dropout) for m in net.modules()) == 1
    assert not net.features[3].training                      # takes the model's eval mode
    assert torch.equal(net(x), y0)                            # eval: same function, same weights
    assert sorted(v.sum().item() for v in net.state_dict().values()) == \
        sorted(v.sum().item() for v in before.values())


def test_insert_dropout_everywhere_and_in_the_head() -> None:
    net = surgery.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.ReLU, 0.2)
    assert sum(isinstance(m, nn.Dropout) for m in net.features) == 3
    net = surgery.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.Flatten, 0.2)
    assert [type(m).__name__ for m in net.head] == ["AdaptiveAvgPool2d", "Flatten", "Dropout", "Linear"]
    net = surgery.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.ReLU, 0.2, index=[-1])
    assert isinstance(net.features[-1], nn.Dropout)


def test_insert_dropout_explains_bad_requests() -> None:
    with pytest.raises(ValueError, match="out of range"):
        surgery.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.ReLU, 0.2, index=3)
    with pytest.raises(ValueError, match="no Softmax"):
        surgery.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.Softmax, 0.2)
    with pytest.raises(ValueError, match="drop"):
        surgery.insert_dropout(models.CNN(widths=(4, 8, 8)), nn.ReLU, 1.0)


def test_replace_classifier_gives_a_fresh_last_layer_with_new_outputs() -> None:
    net = models.CNN(widths=(4, 8, 8))
    trunk = {k: v.clone() for k, v in net.features.state_dict().items()}
    surgery.replace_classifier(net, 5)
    assert net.head[-1].out_features == 5 and net.head[-1].in_features == 8
    assert all(torch.equal(v, trunk[k]) for k, v in net.features.state_dict().items())
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 5)


# --- moving the head's dropout on a trained network (with_head_dropout) -------------------

@pytest.mark.parametrize("at", ["H1", "H2", "H3", "H4", "H5", "H6", None])
def test_moving_the_head_dropout_keeps_the_trained_network(at, trained_like):
    model = trained_like()
    x = torch.randn(8, 1, 28, 28)
    moved = surgery.with_head_dropout(model, at, p=0.3).eval()
    with torch.no_grad():
        assert torch.allclose(moved(x), model(x), atol=1e-6)
    assert sum(isinstance(m, nn.Dropout) for m in moved.head) == (0 if at is None else 1)
    assert moved.head_dropout_at == at and not moved.outputs_probabilities


def test_h7_copy_returns_the_softmax_of_the_original_logits(trained_like):
    model = trained_like()
    x = torch.randn(8, 1, 28, 28)
    moved = surgery.with_head_dropout(model, "H7", p=0.2).eval()
    assert moved.outputs_probabilities and train.outputs_probabilities(moved)
    with torch.no_grad():
        assert torch.allclose(moved(x), model(x).softmax(1), atol=1e-6)


def test_the_moved_dropout_sits_where_the_head_table_says(trained_like):
    moved = surgery.with_head_dropout(trained_like(), "H4", p=0.1)
    kinds = [type(m).__name__ for m in moved.head]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Dropout", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert moved.head[3].p == 0.1


def test_moving_the_head_dropout_leaves_the_original_model_untouched(trained_like):
    model = trained_like()
    before = [t.clone() for t in model.state_dict().values()]
    moved = surgery.with_head_dropout(model, "H5", p=0.5)
    with torch.no_grad():
        for t in moved.parameters():
            t.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


@pytest.mark.parametrize("at", ["H1", "H2", "H3"])
def test_moving_the_head_dropout_to_h1_to_h3_needs_a_head_conv(at, trained_like):
    with pytest.raises(ValueError, match="head_conv=True"):
        surgery.with_head_dropout(trained_like(head_conv=False), at)


def test_a_head_without_conv_still_moves_between_h4_and_h7(trained_like):
    model = trained_like(head_conv=False)
    moved = surgery.with_head_dropout(model, "H6", p=0.1).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(moved(x), model(x), atol=1e-6)


def test_moving_the_head_dropout_refuses_a_bad_position_or_p(trained_like):
    with pytest.raises(ValueError, match="H1, H2"):
        surgery.with_head_dropout(trained_like(), "H8")
    with pytest.raises(ValueError, match="probability of dropping"):
        surgery.with_head_dropout(trained_like(), "H4", p=1.0)
