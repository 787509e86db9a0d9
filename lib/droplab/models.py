"""The convolutional networks of the book, with every dropout position by name.

Kim et al. (UAI 2023) name eight places for dropout in a residual block
(P0-P7, their Figure 2) and seven in the classification head (H1-H7, their
Figure 4). Each block here is one ``nn.Sequential`` in execution order, filled
from its layout in :mod:`droplab.blocks` (the one source of where each
position sits, which the diagrams draw too), so ``print(model)`` shows where
dropout sits::

    PreResNet(20, dropout_at="P6", head_dropout_at="H4")   # Guidelines 1 and 2

Positions
---------

:data:`POSITIONS` is the table of P0-P7, one column per architecture
(PreResNet basic, PreResNet bottleneck, ResNetV1; chapter 3 prints it): P1-P3
sit around the *first* BN-ReLU of the branch, P4-P6 around the *last*, P7
after the last weight layer, so Guideline 1 ("after the last BN, before the
last weight layer of the residual branch"; for ResNetV1 "at the end of the
branch", Kim et al. Section 3.1) is ``P6`` in all three (:data:`GUIDELINE`).
The head (:data:`droplab.blocks.HEAD_POSITIONS`) is

``features -> [H1 Conv1x1 H2 BN H3 ReLU] H4 -> GAP -> Flatten -> H5 FC H6 -> [softmax H7]``

with the bracketed head conv built for H1-H3 or ``head_conv=True``. A
PreResNet's trunk ends with its own final BN-ReLU, so H4 is always "after the
last activation, before GAP" (Guideline 2). With H7 the model returns
*probabilities* and says so (``model.outputs_probabilities``), and
``droplab.train.criterion`` takes their negative log.

Beyond BN (chapter 6): ``norm`` swaps every BN of a PreResNet for GroupNorm or LayerNorm
(:func:`norm2d`; P0-P7 keep their places around "the norm"), and ``dropout_at="P7path"`` is
DropPath at P7's place. The vision transformer is :mod:`droplab.transformer`; one network
from a config, whatever its architecture, is :func:`droplab.networks.build`.

The library follows PyTorch: ``p`` is the probability of *dropping* a unit
(Kim et al. write p for the keep probability, q = 1 - p in the book).
The fully connected blocks of the module tests live with them, in :mod:`droplab.inconsistency`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from droplab import blocks
from droplab.blocks import DROP_PATH, HEAD_POSITION_NAMES, ResidualBlock, Slot, check_position, with_dropout
from droplab.dropout import check_p

# The tables of droplab.blocks that chapters 3 and 4 and the experiment registry read from here.
POSITIONS = blocks.POSITIONS
POSITION_NAMES = blocks.POSITION_NAMES
GUIDELINE = blocks.GUIDELINE
#: The PreResNet block types and their layouts in :mod:`droplab.blocks`.
BLOCK_LAYOUTS: dict[str, str] = {"basic": "preresnet-basic", "bottleneck": "preresnet-bottleneck"}
BLOCKS: tuple[str, ...] = tuple(BLOCK_LAYOUTS)
NORMS: tuple[str, ...] = ("batch", "group", "layer")
# GroupNorm's groups (norm2d) have 4 channels each. Wu & He's default of 32 groups would leave a
# 16-channel stage half a channel per group; a fixed group size means the same normalization in every
# stage (4, 8, 16 groups at width 16) and stays away from 1 channel per group (InstanceNorm), their worst.
GROUP_SIZE = 4


# -------- Checking arguments and the layers that fill the slots ----------------------

def _check_depth(depth: int, block: str) -> int:
    """Number of blocks per stage: depth = 6n+2 (basic) or 9n+2 (bottleneck)."""
    per = 6 if block == "basic" else 9
    if not isinstance(depth, int) or depth < per + 2 or (depth - 2) % per:
        valid = ", ".join(str(per * n + 2) for n in range(1, 7))
        raise ValueError(f"depth {depth!r} is not {per}n+2 as a {block}-block network needs; "
                         f"valid depths are {valid}, ...")
    return (depth - 2) // per


def norm2d(norm: str, channels: int) -> nn.Module:
    """The normalization layer of a PreResNet over ``channels`` channels (chapter 6).

    ``"batch"``: ``BatchNorm2d``, batch statistics in training, running ones at inference.
    ``"group"``: ``GroupNorm`` in groups of :data:`GROUP_SIZE` channels (Wu & He 2018).
    ``"layer"``: LayerNorm over (C, H, W), written as ``GroupNorm(1, C)``: one mean and
    variance per sample, with a per-channel scale and shift (``nn.LayerNorm`` would fix
    H and W and learn one per position). GN and LN normalize each sample with its own
    statistics, in training and at inference alike: they keep no running statistics.
    """
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    if norm != "group":
        raise ValueError(f"unknown norm {norm!r}; valid norms are {', '.join(NORMS)}")
    if channels % GROUP_SIZE:
        raise ValueError(f"GroupNorm in groups of {GROUP_SIZE} channels needs a channel count divisible by "
                         f"{GROUP_SIZE}; got {channels} channels (choose a width divisible by {GROUP_SIZE})")
    return nn.GroupNorm(channels // GROUP_SIZE, channels)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


# -------- Residual blocks (Kim et al. Figure 2) ---------------------------------------

def preact_basic_block(cin: int, cout: int, stride: int, at: str | None, p: float,
                       norm: str = "batch") -> ResidualBlock:
    """PreResNet basic block (He et al. 2016b): ``x -> [P0] -> [P1 BN1 P2 ReLU P3 Conv1 P4 BN2 P5 ReLU P6
    Conv2 P7] + shortcut`` (BN or another ``norm``, :func:`norm2d`), the layout "preresnet-basic"."""
    branch = [norm2d(norm, cin), nn.ReLU(), conv3x3(cin, cout, stride), norm2d(norm, cout), nn.ReLU(),
              conv3x3(cout, cout)]
    shortcut = conv1x1(cin, cout, stride) if (stride != 1 or cin != cout) else None
    return blocks.residual_block("preresnet-basic", branch, at, p, shortcut)


def preact_bottleneck_block(cin: int, mid: int, stride: int, at: str | None, p: float,
                            norm: str = "batch") -> ResidualBlock:
    """PreResNet bottleneck block: three BN-ReLU-Conv stages (1x1, 3x3, 1x1), output 4*mid channels,
    ``[P1 BN1 P2 ReLU P3 Conv1 BN2 ReLU Conv2 P4 BN3 P5 ReLU P6 Conv3 P7]``, the layout "preresnet-bottleneck"."""
    cout = 4 * mid
    branch = [norm2d(norm, cin), nn.ReLU(), conv1x1(cin, mid),
              norm2d(norm, mid), nn.ReLU(), conv3x3(mid, mid, stride),
              norm2d(norm, mid), nn.ReLU(), conv1x1(mid, cout)]
    shortcut = conv1x1(cin, cout, stride) if (stride != 1 or cin != cout) else None
    return blocks.residual_block("preresnet-bottleneck", branch, at, p, shortcut)


def v1_basic_block(cin: int, cout: int, stride: int, at: str | None, p: float) -> ResidualBlock:
    """ResNetV1 basic block (He et al. 2016a): ``ReLU([P1 Conv1 P2 BN1 P3 ReLU P4 Conv2 P5 BN2 P6] + shortcut)``
    with P0 on the block input, the layout "resnetv1"."""
    branch = [conv3x3(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU(), conv3x3(cout, cout), nn.BatchNorm2d(cout)]
    shortcut = (nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
                if (stride != 1 or cin != cout) else None)
    return blocks.residual_block("resnetv1", branch, at, p, shortcut, post=nn.ReLU())


# -------- The head (Kim et al. Figure 4) ----------------------------------------------

def make_head(channels: int, num_classes: int, at: str | None = None, p: float = 0.1,
              conv: bool = False, norm: str = "batch") -> nn.Sequential:
    """``[H1 Conv1x1 H2 BN H3 ReLU] H4 GAP Flatten H5 FC H6 [Softmax H7]``, the layout "head".

    The head conv (channels -> channels) is built when ``conv`` or when ``at``
    is H1-H3 (its BN is ``norm``, :func:`norm2d`); the softmax only when ``at`` is H7
    (the model then returns probabilities): :func:`droplab.blocks.head_slots`.
    """
    check_position(at, HEAD_POSITION_NAMES, "the head")
    check_p(p, "head_p")
    make: dict[str, Callable[[], nn.Module]] = {
        "Conv1x1": lambda: conv1x1(channels, channels), "BN": lambda: norm2d(norm, channels), "act": nn.ReLU,
        "GAP": lambda: nn.AdaptiveAvgPool2d(1), "Flatten": nn.Flatten, "FC": lambda: nn.Linear(channels, num_classes),
        "softmax": lambda: nn.Softmax(dim=1),
    }
    slots = blocks.head_slots(at, conv)
    return with_dropout(blocks.fill(slots, *[make[e.label]() for e in slots if isinstance(e, blocks.Layer)]), at, p)


def _init(model: nn.Module) -> None:
    """He initialisation for convs, BN weight 1 and bias 0 (He et al. 2016a)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _Network(nn.Module):
    """features -> head; ``model.features`` is stem, stages and final, ``model.head`` the head."""

    outputs_probabilities: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# -------- The residual networks -------------------------------------------------------

def _stages(width: int, n: int, make: Callable[[int, int, int], nn.Module], expansion: int = 1,
            ) -> tuple[list[nn.Module], int]:
    """Three stages of ``n`` blocks ``make(cin, planes, stride)``, planes ``width, 2 width, 4 width``
    (times ``expansion`` at a block's output), stride 2 at the start of stages 2 and 3.
    Returns the blocks and the channels of the last one."""
    out: list[nn.Module] = []
    cin = width
    for stage in range(3):
        planes = width * 2**stage
        for i in range(n):
            out.append(make(cin, planes, 2 if (stage > 0 and i == 0) else 1))
            cin = expansion * planes
    return out, cin


class _ResNet(_Network):
    """What :class:`PreResNet` and :class:`ResNetV1` share: the argument checks, the head, the init."""

    def _check(self, depth: int, block: str, dropout_at: str | None, positions: Sequence[str], where: str,
               head_dropout_at: str | None, p: float, head_p: float | None) -> tuple[int, float, float]:
        """Check the arguments, remember the names; return blocks per stage, ``p`` and ``head_p``."""
        n = _check_depth(depth, block)
        check_position(dropout_at, positions, where)
        p = float(check_p(p))
        head_p = p if head_p is None else float(check_p(head_p, "head_p"))
        self.depth, self.block, self.dropout_at, self.head_dropout_at = depth, block, dropout_at, head_dropout_at
        return n, p, head_p

    def _finish(self, features: nn.Sequential, channels: int, num_classes: int, head_dropout_at: str | None,
                head_p: float, head_conv: bool, norm: str = "batch") -> None:
        """Attach the trunk and the head (Kim et al. Figure 4), then initialise every weight."""
        self.features = features
        self.head = make_head(channels, num_classes, head_dropout_at, head_p, head_conv, norm)
        self.outputs_probabilities = head_dropout_at == "H7"
        _init(self)

    @property
    def blocks(self) -> list[ResidualBlock]:
        """The residual blocks, in order."""
        return [m for m in self.features if isinstance(m, ResidualBlock)]


class PreResNet(_ResNet):
    """Pre-activation ResNet for 28x28 and 32x32 inputs (He et al. 2016b): a 3x3 stem conv, three
    stages of widths ``width, 2*width, 4*width`` (times 4 out of a bottleneck) with stride 2 and a 1x1
    conv shortcut where they start, a final BN-ReLU. ``depth`` is 6n+2 (basic) or 9n+2 (bottleneck).

    ``dropout_at`` (P0-P7, Kim et al. Figure 2) puts ``nn.Dropout(p)`` at that position in *every*
    block, ``"P7path"`` DropPath at P7's place (chapter 6); ``head_dropout_at`` (H1-H7, Figure 4)
    one in the head with ``head_p`` (default ``p``). ``norm`` ("batch", "group", "layer",
    :func:`norm2d`) is every normalization of the net: blocks, final, head (chapter 6).
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 block: str = "basic", dropout_at: str | None = None, head_dropout_at: str | None = None,
                 p: float = 0.1, head_p: float | None = None, head_conv: bool = False, norm: str = "batch"):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block type {block!r}; valid block types are {', '.join(BLOCKS)}")
        positions = blocks.layout(BLOCK_LAYOUTS[block]).positions + (DROP_PATH,)
        n, p, head_p = self._check(depth, block, dropout_at, positions, f"a PreResNet {block} block",
                                   head_dropout_at, p, head_p)
        self.norm = norm
        make = preact_basic_block if block == "basic" else preact_bottleneck_block
        stages, cin = _stages(width, n, lambda c, planes, stride: make(c, planes, stride, dropout_at, p, norm),
                              expansion=1 if block == "basic" else 4)
        self._finish(nn.Sequential(
            conv3x3(in_channels, width),                        # stem
            *stages,
            nn.Sequential(norm2d(norm, cin), nn.ReLU()),        # final BN-ReLU of the trunk
        ), cin, num_classes, head_dropout_at, head_p, head_conv, norm)


class ResNetV1(_ResNet):
    """The original, post-activation ResNet for 28x28 and 32x32 inputs (He et al. 2016a).

    Basic blocks ``ReLU([Conv-BN-ReLU-Conv-BN] + shortcut)``, depth 6n+2, a
    3x3 Conv-BN-ReLU stem, three stages of widths ``width, 2*width, 4*width``
    and a 1x1 Conv-BN projection shortcut where the shape changes. Dropout
    positions P0-P6 as in :data:`POSITIONS`; Guideline 1 is P6, the end of the
    branch (Kim et al. Section 3.1, Table 3).
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 dropout_at: str | None = None, head_dropout_at: str | None = None,
                 p: float = 0.1, head_p: float | None = None, head_conv: bool = False):
        super().__init__()
        n, p, head_p = self._check(depth, "basic", dropout_at, blocks.layout("resnetv1").positions, "a ResNetV1 block",
                                   head_dropout_at, p, head_p)
        stages, cin = _stages(width, n, lambda c, planes, stride: v1_basic_block(c, planes, stride, dropout_at, p))
        self._finish(nn.Sequential(
            nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU()),  # stem
            *stages,
        ), cin, num_classes, head_dropout_at, head_p, head_conv)


# -------- Small non-residual networks for chapters 1-2 --------------------------------

PLAIN_POSITIONS: dict[str, str] = {
    "hidden": "after every hidden activation (Srivastava et al. 2014)",
    "before_bn": "directly before every BN: Linear/Conv -> Dropout -> BN -> ReLU (variance shift, Li et al. 2019)",
    "after_last_bn": "once, after the last BN-ReLU, with no BN after it (Kim et al. Guidelines 1-2)",
}


class MLP(nn.Module):
    """``Flatten -> [Linear (BN) ReLU] x len(hidden) -> Linear``, dropout by name.

    ``dropout_at``: None, ``"hidden"`` (after every hidden ReLU), ``"before_bn"``
    (Linear -> Dropout -> BN -> ReLU; needs ``batch_norm``), ``"after_last_bn"``
    (once, after the last hidden ReLU). The layers are ``model.layers``.
    """

    outputs_probabilities: bool = False

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (256, 256), num_classes: int = 10,
                 p: float = 0.5, dropout_at: str | None = None, batch_norm: bool = False):
        super().__init__()
        check_position(dropout_at, tuple(PLAIN_POSITIONS), "an MLP")
        p = float(check_p(p))
        if dropout_at == "before_bn" and not batch_norm:
            raise ValueError("dropout_at='before_bn' needs batch_norm=True (there is no BN to put it before)")
        slots: list[Slot] = [nn.Flatten()]
        width = in_features
        for i, h in enumerate(hidden):
            last = i == len(hidden) - 1
            slots += [nn.Linear(width, h, bias=not batch_norm), "before_bn"]
            slots += [nn.BatchNorm1d(h)] if batch_norm else []
            slots += [nn.ReLU(), "hidden"] + (["after_last_bn"] if last else [])
            width = h
        slots.append(nn.Linear(width, num_classes))
        self.layers = with_dropout(slots, dropout_at, p)
        self.dropout_at = dropout_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CNN(_Network):
    """A plain (non-residual) CNN: stages of ``Conv3x3 -> BN -> ReLU`` with 2x2 max-pooling
    between stages, then GAP and FC. For the variance shift of chapter 2.

    ``dropout_at``: None, ``"before_bn"`` (Conv -> Dropout -> BN -> ReLU in every
    layer, where train and test variances disagree) or ``"after_last_bn"`` (one
    dropout after the last BN-ReLU, before GAP: no BN follows it).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128),
                 convs_per_stage: int = 1, p: float = 0.1, dropout_at: str | None = None):
        super().__init__()
        check_position(dropout_at, ("before_bn", "after_last_bn"), "a CNN")
        p = float(check_p(p))
        slots: list[Slot] = []
        cin = in_channels
        for s, w in enumerate(widths):
            if s > 0:
                slots.append(nn.MaxPool2d(2))
            for _ in range(convs_per_stage):
                slots += [conv3x3(cin, w), "before_bn", nn.BatchNorm2d(w), nn.ReLU()]
                cin = w
        slots.append("after_last_bn")
        self.features = with_dropout(slots, dropout_at, p)
        self.head = make_head(cin, num_classes)
        self.dropout_at = dropout_at
        _init(self)


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(t.numel() for t in model.parameters() if t.requires_grad)
