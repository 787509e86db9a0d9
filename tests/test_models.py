"""droplab.models: every dropout position sits where the book's tables say (Kim et al. Figures 2 and 4),
and moving the head's dropout on a trained network (with_head_dropout, chapter 4) keeps the network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from droplab import models, networks
from droplab.dropout import is_dropout
from droplab.models import CNN, GUIDELINE, MLP, PreResNet, ResNetV1

LETTER = {nn.BatchNorm2d: "B", nn.BatchNorm1d: "B", nn.ReLU: "R", nn.Conv2d: "C", nn.Dropout: "D",
          nn.AdaptiveAvgPool2d: "A", nn.Flatten: "F", nn.Linear: "L", nn.Softmax: "S", nn.MaxPool2d: "M"}


def layout(seq: nn.Sequential) -> str:
    """The modules of a Sequential as letters, e.g. 'B R C B R D C'."""
    return " ".join(LETTER[type(m)] for m in seq)


# --- residual branches ---------------------------------------------------------------------

PRERESNET_BASIC = {
    "P1": "D B R C B R C",
    "P2": "B D R C B R C",
    "P3": "B R D C B R C",
    "P4": "B R C D B R C",
    "P5": "B R C B D R C",
    "P6": "B R C B R D C",
    "P7": "B R C B R C D",
}
PRERESNET_BOTTLENECK = {
    "P1": "D B R C B R C B R C",
    "P2": "B D R C B R C B R C",
    "P3": "B R D C B R C B R C",
    "P4": "B R C B R C D B R C",
    "P5": "B R C B R C B D R C",
    "P6": "B R C B R C B R D C",
    "P7": "B R C B R C B R C D",
}
RESNETV1 = {
    "P1": "D C B R C B",
    "P2": "C D B R C B",
    "P3": "C B D R C B",
    "P4": "C B R D C B",
    "P5": "C B R C D B",
    "P6": "C B R C B D",
}


@pytest.mark.parametrize("position", sorted(PRERESNET_BASIC))
def test_preresnet_basic_position_is_where_the_table_says_in_every_block(position):
    model = PreResNet(20, dropout_at=position)
    assert len(model.blocks) == 9
    for block in model.blocks:
        assert layout(block.branch) == PRERESNET_BASIC[position]
        assert isinstance(block.pre, nn.Identity)


@pytest.mark.parametrize("position", sorted(PRERESNET_BOTTLENECK))
def test_preresnet_bottleneck_position_is_where_the_table_says(position):
    model = PreResNet(11, block="bottleneck", dropout_at=position)
    for block in model.blocks:
        assert layout(block.branch) == PRERESNET_BOTTLENECK[position]


@pytest.mark.parametrize("position", sorted(RESNETV1))
def test_resnetv1_position_is_where_the_table_says(position):
    model = ResNetV1(8, dropout_at=position)
    for block in model.blocks:
        assert layout(block.branch) == RESNETV1[position]
        assert isinstance(block.post, nn.ReLU)


def test_resnetv1_has_no_p7_because_p6_ends_the_branch():
    with pytest.raises(ValueError, match="P6"):
        ResNetV1(8, dropout_at="P7")


def test_guideline_1_is_after_the_last_bn_before_the_last_weight_layer():
    # Kim et al. Guideline 1: P6 everywhere; the dropout has a BN before it and no BN after it.
    assert {GUIDELINE[a][0] for a in ("preresnet-basic", "preresnet-bottleneck", "resnetv1")} == {"P6"}
    assert GUIDELINE["head"][0] == "H4"
    for model in (PreResNet(8, dropout_at="P6"), PreResNet(11, block="bottleneck", dropout_at="P6"),
                  ResNetV1(8, dropout_at="P6")):
        text = layout(model.blocks[0].branch)
        before, after = text.split("D")
        assert "B" in before and "B" not in after
        assert after.strip() in ("C", "")  # at most the last weight layer follows


def test_no_dropout_anywhere_without_a_position():
    model = PreResNet(20)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_p0_drops_the_shortcut_too():
    torch.manual_seed(0)
    block = PreResNet(8, width=8, dropout_at="P0", p=0.5).blocks[0]   # identity shortcut
    assert isinstance(block.pre, nn.Dropout) and layout(block.branch) == "B R C B R C"
    seen = {}
    block.shortcut.register_forward_hook(lambda m, inp, out: seen.__setitem__("shortcut", inp[0]))
    block.branch.register_forward_hook(lambda m, inp, out: seen.__setitem__("branch", inp[0]))
    x = torch.rand(4, 8, 6, 6) + 0.1                                    # no zeros of its own
    block.train()(x)
    assert seen["shortcut"] is seen["branch"]                           # one dropped tensor, both paths
    assert (seen["shortcut"] == 0).float().mean() > 0.3                 # about half the units dropped


def test_p1_leaves_the_shortcut_intact():
    block = PreResNet(8, width=8, dropout_at="P1", p=0.5).blocks[0]
    seen = {}
    block.shortcut.register_forward_hook(lambda m, inp, out: seen.__setitem__("shortcut", inp[0]))
    x = torch.rand(4, 8, 6, 6) + 0.1
    block.train()(x)
    assert torch.equal(seen["shortcut"], x)


# --- the head ------------------------------------------------------------------------------

HEAD = {
    "H1": "D C B R A F L",
    "H2": "C D B R A F L",
    "H3": "C B D R A F L",
    "H4": "D A F L",
    "H5": "A F D L",
    "H6": "A F L D",
    "H7": "A F L S D",
}


@pytest.mark.parametrize("position", sorted(HEAD))
def test_head_position_is_where_the_table_says(position):
    model = PreResNet(8, head_dropout_at=position)
    assert layout(model.head) == HEAD[position]
    assert model.outputs_probabilities == (position == "H7")


def test_h4_with_the_head_conv_is_after_its_activation_before_gap():
    assert layout(PreResNet(8, head_dropout_at="H4", head_conv=True).head) == "C B R D A F L"


def test_h4_follows_the_last_activation_of_the_preresnet_trunk():
    model = PreResNet(8, head_dropout_at="H4")
    assert layout(model.features[-1]) == "B R"        # the trunk's final BN-ReLU
    assert layout(model.head).startswith("D A")


def test_h7_model_returns_probabilities_after_dropout():
    model = PreResNet(8, in_channels=1, width=4, head_dropout_at="H7", p=0.5).eval()
    probs = model(torch.randn(3, 1, 28, 28))
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)


def test_head_p_overrides_p():
    model = PreResNet(8, dropout_at="P6", head_dropout_at="H4", p=0.1, head_p=0.3)
    assert model.head[0].p == 0.3 and model.blocks[0].branch[5].p == 0.1


# --- moving the head's dropout on a trained network (with_head_dropout) -------------------


# --- sizes and parameter counts ------------------------------------------------------------

@pytest.mark.parametrize("depth, expected", [(20, 0.27e6), (56, 0.86e6), (110, 1.7e6)])
def test_parameter_counts_match_the_standard_preresnets(depth, expected):
    n = models.num_parameters(PreResNet(depth, num_classes=10, in_channels=3))
    assert abs(n - expected) / expected < 0.03


def test_dropout_adds_no_parameters():
    base = models.num_parameters(PreResNet(20))
    assert all(models.num_parameters(PreResNet(20, dropout_at=p)) == base for p in models.POSITION_NAMES)


@pytest.mark.parametrize("make", [
    lambda c: PreResNet(8, in_channels=c, width=4),
    lambda c: PreResNet(11, in_channels=c, width=4, block="bottleneck"),
    lambda c: ResNetV1(8, in_channels=c, width=4),
    lambda c: CNN(in_channels=c, widths=(4, 8)),
])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_28_and_32_pixel_inputs_give_logits(make, shape):
    out = make(shape[0]).eval()(torch.randn(2, *shape))
    assert out.shape == (2, 10)


def test_mlp_on_flat_and_image_inputs():
    model = MLP(hidden=(16,)).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_eval_mode_is_deterministic():
    model = PreResNet(8, in_channels=1, width=4, dropout_at="P6", head_dropout_at="H4", p=0.5).eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(model(x), model(x))


def test_train_mode_dropout_is_random():
    model = PreResNet(8, in_channels=1, width=4, dropout_at="P6", p=0.5).train()
    x = torch.randn(4, 1, 28, 28)
    assert not torch.equal(model(x), model(x))


def test_p_zero_equals_no_dropout():
    x = torch.randn(4, 1, 28, 28)
    torch.manual_seed(0)
    plain = PreResNet(8, in_channels=1, width=4)
    torch.manual_seed(0)
    zero = PreResNet(8, in_channels=1, width=4, dropout_at="P6", head_dropout_at="H5", p=0.0)
    assert torch.equal(plain.train()(x), zero.train()(x))


# --- small networks for chapters 1-2 -------------------------------------------------------

def test_mlp_dropout_positions():
    assert layout(MLP(hidden=(8, 8), dropout_at="hidden").layers) == "F L R D L R D L"
    assert layout(MLP(hidden=(8, 8), dropout_at="before_bn", batch_norm=True).layers) == "F L D B R L D B R L"
    assert layout(MLP(hidden=(8, 8), dropout_at="after_last_bn", batch_norm=True).layers) == "F L B R L B R D L"


def test_cnn_dropout_before_every_bn_or_only_after_the_last():
    assert layout(CNN(widths=(4, 8), dropout_at="before_bn").features) == "C D B R M C D B R"
    assert layout(CNN(widths=(4, 8), dropout_at="after_last_bn").features) == "C B R M C B R D"
    assert layout(CNN(widths=(4, 8)).features) == "C B R M C B R"


# --- errors for people -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, says", [
    ({"depth": 20, "dropout_at": "P8"}, "P0, P1, P2, P3, P4, P5, P6, P7"),
    ({"depth": 20, "head_dropout_at": "H0"}, "H1, H2, H3, H4, H5, H6, H7"),
    ({"depth": 21}, "6n+2"),
    ({"depth": 21, "block": "bottleneck"}, "9n+2"),
    ({"depth": 20, "p": 1.0}, "[0, 1)"),
    ({"depth": 20, "p": -0.1}, "[0, 1)"),
    ({"depth": 20, "block": "wide"}, "basic, bottleneck"),
])
def test_bad_arguments_say_what_is_valid(kwargs, says):
    with pytest.raises(ValueError) as err:
        PreResNet(**kwargs)
    assert says in str(err.value)


def test_mlp_before_bn_needs_batch_norm():
    with pytest.raises(ValueError, match="batch_norm=True"):
        MLP(dropout_at="before_bn")


# --- beyond batch norm (chapter 6): GroupNorm and LayerNorm nets, DropPath ------------------

NORM_LETTER = {**LETTER, nn.GroupNorm: "B"}                 # "B" is the slot of the norm, whichever it is


def norm_layout(seq: nn.Sequential) -> str:
    return " ".join(NORM_LETTER[type(m)] for m in seq)


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("position", sorted(PRERESNET_BASIC))
def test_swapping_the_norm_keeps_every_position(norm, position):
    model = PreResNet(8, width=8, dropout_at=position, norm=norm)
    for block in model.blocks:
        assert norm_layout(block.branch) == PRERESNET_BASIC[position]


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_swapping_the_norm_keeps_the_bottleneck_and_head_positions(norm):
    model = PreResNet(11, width=8, block="bottleneck", dropout_at="P6", head_dropout_at="H3", norm=norm)
    assert norm_layout(model.blocks[0].branch) == PRERESNET_BOTTLENECK["P6"]
    assert norm_layout(model.head) == HEAD["H3"] and norm_layout(model.features[-1]) == "B R"


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_group_and_layer_norm_nets_have_no_bn_and_no_running_statistics(norm):
    model = PreResNet(11, width=8, block="bottleneck", head_conv=True, norm=norm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert list(model.buffers()) == []
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 * 3 + 1 + 1                    # three per block, the final one, the head's
    for m in norms:
        assert m.num_groups == (1 if norm == "layer" else m.num_channels // models.GROUP_SIZE)
    assert model.norm == norm


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_a_group_or_layer_norm_net_trains_a_step(norm):
    torch.manual_seed(0)
    model = networks.build(networks.NetConfig(width=4, depth=8, norm=norm, dropout_at="P6", head_conv=True))
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    loss = nn.functional.cross_entropy(model.train()(x), y)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    model.eval()
    # each sample is normalized with its own statistics: its output does not depend on its batch
    assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5)


def test_the_default_norm_is_batch_norm_as_before():
    assert networks.NetConfig().norm == "batch"
    torch.manual_seed(0)
    a = PreResNet(8, in_channels=1, width=4)
    torch.manual_seed(0)
    b = PreResNet(8, in_channels=1, width=4, norm="batch")
    assert str(a) == str(b) and all(torch.equal(u, v) for u, v in zip(a.state_dict().values(),
                                                                     b.state_dict().values()))


def test_bad_norms_say_what_is_valid():
    with pytest.raises(ValueError, match="batch, group, layer"):
        PreResNet(8, norm="instance")
    with pytest.raises(ValueError, match="divisible by 4"):
        PreResNet(8, width=6, norm="group")
    with pytest.raises(ValueError, match="BN only"):
        networks.build(networks.NetConfig(arch="resnetv1", depth=8, norm="group"))


@pytest.mark.parametrize("block, depth", [("basic", 8), ("bottleneck", 11)])
def test_drop_path_sits_at_p7_and_drops_the_whole_branch(block, depth):
    model = PreResNet(depth, width=8, block=block, dropout_at=models.DROP_PATH, p=0.5)
    for b in model.blocks:
        last = b.branch[-1]
        assert type(last).__name__ == "StochasticDepth" and last.p == 0.5 and last.mode == "row"
        assert isinstance(b.pre, nn.Identity)
    assert len([m for m in model.modules() if is_dropout(m)]) == len(model.blocks)
    seen = {}
    model.blocks[0].branch[-1].register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0], out=out))
    torch.manual_seed(0)
    model.blocks[0].branch.train()(torch.randn(64, 8, 6, 6))
    inp, out = seen["inp"].flatten(1), seen["out"].flatten(1)
    zero, scaled = (out == 0).all(1), torch.isclose(out, inp / 0.5).all(1)
    assert bool((zero | scaled).all()) and 0.2 < zero.float().mean() < 0.8   # whole branches, 0 or / q


def test_drop_path_is_for_preresnets_only():
    with pytest.raises(ValueError, match="P6"):
        ResNetV1(8, dropout_at=models.DROP_PATH)
    assert models.DROP_PATH not in models.POSITION_NAMES          # the P0-P7 sweeps stay as they are
