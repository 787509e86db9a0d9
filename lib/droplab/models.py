"""The networks of the book, with every dropout position by name.

Kim et al. (UAI 2023) name eight places for dropout in a residual block
(P0-P7, their Figure 2) and seven in the classification head (H1-H7, their
Figure 4). Here each name is a slot in one ``nn.Sequential`` written in
execution order, so ``print(model)`` shows where dropout sits::

    PreResNet(20, dropout_at="P6", head_dropout_at="H4")   # Guidelines 1 and 2

Positions in a residual block (``POSITIONS`` holds the same table)
-------------------------------------------------------------------

=====  ==========================  =================================  ===========================
name   PreResNet basic             PreResNet bottleneck               ResNetV1 (basic)
=====  ==========================  =================================  ===========================
P0     block input, before the split into shortcut and branch (the shortcut sees the dropped input too)
P1     start of branch, before BN1  start of branch, before BN1       start of branch, before Conv1
P2     after BN1                   after BN1                          after Conv1, before BN1
P3     after the first ReLU        after the first ReLU               after BN1
P4     after Conv1, before BN2     after Conv2, before BN3            after the ReLU, before Conv2
P5     after BN2                   after BN3                          after Conv2, before BN2
P6     after the second ReLU,      after the third ReLU,              after BN2: the end of the
       before Conv2                before Conv3                       branch, before the addition
P7     after Conv2, before the     after Conv3, before the addition   (none: P6 already ends the
       addition                                                       branch)
=====  ==========================  =================================  ===========================

The rule behind the mapping: P1-P3 sit around the *first* BN-ReLU of the
branch, P4-P6 around the *last* BN-ReLU, P7 after the last weight layer.
The middle BN-ReLU-Conv stage of a bottleneck has no name. With this mapping
Guideline 1 ("one dropout after the last BN, before the last weight layer of
the residual branch"; for ResNetV1 "at the end of the branch", Kim et al.
Section 3.1) is ``P6`` in all three architectures (``GUIDELINE_1``).

Positions in the head
---------------------

``features -> [H1 Conv1x1 H2 BN H3 ReLU] H4 -> GAP -> Flatten -> H5 FC H6 -> [softmax H7]``

The bracketed head conv (as in MobileNetV2/EfficientNet heads) is built when
H1, H2 or H3 is asked for, or with ``head_conv=True``. In a PreResNet the
trunk ends with its own final BN-ReLU (pre-activation blocks leave their
output un-normalised), which belongs to the trunk (``model.final``), so H4 is
always "after the last activation, before GAP" (Guideline 2). With H7 the
model ends in softmax followed by dropout and returns *probabilities*; it says
so with ``model.outputs_probabilities = True`` and ``droplab.train.criterion``
takes the negative log of those probabilities instead of cross-entropy on logits.

The library follows PyTorch: ``p`` is the probability of *dropping* a unit
(Kim et al. write p for the keep probability, q = 1 - p in the book).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import nn

POSITION_NAMES: tuple[str, ...] = tuple(f"P{i}" for i in range(8))
HEAD_POSITION_NAMES: tuple[str, ...] = tuple(f"H{i}" for i in range(1, 8))
BLOCKS: tuple[str, ...] = ("basic", "bottleneck")

POSITIONS: dict[str, dict[str, str]] = {
    "preresnet-basic": {
        "P0": "block input, before the split into shortcut and branch",
        "P1": "start of the branch, before BN1",
        "P2": "after BN1",
        "P3": "after the first ReLU",
        "P4": "after Conv1, before BN2",
        "P5": "after BN2",
        "P6": "after the second ReLU, before Conv2 (Guideline 1)",
        "P7": "after Conv2, before the addition",
    },
    "preresnet-bottleneck": {
        "P0": "block input, before the split into shortcut and branch",
        "P1": "start of the branch, before BN1",
        "P2": "after BN1",
        "P3": "after the first ReLU",
        "P4": "after Conv2, before BN3",
        "P5": "after BN3",
        "P6": "after the third ReLU, before Conv3 (Guideline 1)",
        "P7": "after Conv3, before the addition",
    },
    "resnetv1": {
        "P0": "block input, before the split into shortcut and branch",
        "P1": "start of the branch, before Conv1",
        "P2": "after Conv1, before BN1",
        "P3": "after BN1",
        "P4": "after the ReLU, before Conv2",
        "P5": "after Conv2, before BN2",
        "P6": "after BN2, the end of the branch before the addition (Guideline 1)",
    },
}

HEAD_POSITIONS: dict[str, str] = {
    "H1": "head input, before the head conv",
    "H2": "after the head conv, before its BN",
    "H3": "after the head BN",
    "H4": "after the last activation, before GAP (Guideline 2)",
    "H5": "after GAP, before FC (the common practice)",
    "H6": "after FC, on the logits",
    "H7": "after softmax, on the probabilities",
}

GUIDELINE_1: dict[str, str] = {"preresnet-basic": "P6", "preresnet-bottleneck": "P6", "resnetv1": "P6"}
GUIDELINE_2: str = "H4"

Slot = Union[str, nn.Module]


# ----------------------------------------------------------------------------
# Checking arguments and filling position slots
# ----------------------------------------------------------------------------

def _check_p(p: float, what: str = "p") -> float:
    if not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{what} is the probability of dropping a unit and must be in [0, 1), got {p!r}")
    return float(p)


def _check_position(at: str | None, valid: Sequence[str], where: str) -> str | None:
    if at is not None and at not in valid:
        raise ValueError(f"unknown dropout position {at!r} for {where}; valid positions are "
                         f"{', '.join(valid)} (or None for no dropout)")
    return at


def _check_depth(depth: int, block: str) -> int:
    """Number of blocks per stage: depth = 6n+2 (basic) or 9n+2 (bottleneck)."""
    per = 6 if block == "basic" else 9
    if not isinstance(depth, int) or depth < per + 2 or (depth - 2) % per:
        valid = ", ".join(str(per * n + 2) for n in range(1, 7))
        raise ValueError(f"depth {depth!r} is not {per}n+2 as a {block}-block network needs; "
                         f"valid depths are {valid}, ...")
    return (depth - 2) // per


def with_dropout(slots: Sequence[Slot], at: str | None, p: float) -> nn.Sequential:
    """An ``nn.Sequential`` of the modules in ``slots``, with ``nn.Dropout(p)`` at every
    slot whose name equals ``at``; the other names are dropped from the sequence."""
    return nn.Sequential(*[nn.Dropout(p) if s == at else s for s in slots
                           if isinstance(s, nn.Module) or s == at])


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


# ----------------------------------------------------------------------------
# Residual blocks (Kim et al. Figure 2)
# ----------------------------------------------------------------------------

class ResidualBlock(nn.Module):
    """``out = post(branch(pre(x)) + shortcut(pre(x)))``.

    ``pre`` is dropout at P0 (else identity), so the shortcut sees the dropped
    input too; ``post`` is the ReLU after the addition in ResNetV1 (else identity).
    """

    def __init__(self, branch: nn.Sequential, shortcut: nn.Module, pre: nn.Module, post: nn.Module):
        super().__init__()
        self.pre = pre
        self.branch = branch
        self.shortcut = shortcut
        self.post = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        return self.post(self.branch(x) + self.shortcut(x))


def preact_basic_block(cin: int, cout: int, stride: int, at: str | None, p: float) -> ResidualBlock:
    """PreResNet basic block (He et al. 2016b): x -> [BN1 ReLU Conv1 BN2 ReLU Conv2] + shortcut."""
    branch = with_dropout([
        "P1", nn.BatchNorm2d(cin), "P2", nn.ReLU(), "P3", conv3x3(cin, cout, stride), "P4",
        nn.BatchNorm2d(cout), "P5", nn.ReLU(), "P6", conv3x3(cout, cout), "P7",
    ], at, p)
    shortcut = conv1x1(cin, cout, stride) if (stride != 1 or cin != cout) else nn.Identity()
    return ResidualBlock(branch, shortcut, nn.Dropout(p) if at == "P0" else nn.Identity(), nn.Identity())


def preact_bottleneck_block(cin: int, mid: int, stride: int, at: str | None, p: float) -> ResidualBlock:
    """PreResNet bottleneck block: three BN-ReLU-Conv stages (1x1, 3x3, 1x1), output 4*mid channels."""
    cout = 4 * mid
    branch = with_dropout([
        "P1", nn.BatchNorm2d(cin), "P2", nn.ReLU(), "P3", conv1x1(cin, mid),
        nn.BatchNorm2d(mid), nn.ReLU(), conv3x3(mid, mid, stride), "P4",
        nn.BatchNorm2d(mid), "P5", nn.ReLU(), "P6", conv1x1(mid, cout), "P7",
    ], at, p)
    shortcut = conv1x1(cin, cout, stride) if (stride != 1 or cin != cout) else nn.Identity()
    return ResidualBlock(branch, shortcut, nn.Dropout(p) if at == "P0" else nn.Identity(), nn.Identity())


def v1_basic_block(cin: int, cout: int, stride: int, at: str | None, p: float) -> ResidualBlock:
    """ResNetV1 basic block (He et al. 2016a): ReLU([Conv1 BN1 ReLU Conv2 BN2] + shortcut)."""
    branch = with_dropout([
        "P1", conv3x3(cin, cout, stride), "P2", nn.BatchNorm2d(cout), "P3", nn.ReLU(), "P4",
        conv3x3(cout, cout), "P5", nn.BatchNorm2d(cout), "P6",
    ], at, p)
    shortcut = (nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
                if (stride != 1 or cin != cout) else nn.Identity())
    return ResidualBlock(branch, shortcut, nn.Dropout(p) if at == "P0" else nn.Identity(), nn.ReLU())


# ----------------------------------------------------------------------------
# The head (Kim et al. Figure 4)
# ----------------------------------------------------------------------------

def make_head(channels: int, num_classes: int, at: str | None = None, p: float = 0.1,
              conv: bool = False) -> nn.Sequential:
    """``[H1 Conv1x1 H2 BN H3 ReLU] H4 GAP Flatten H5 FC H6 [Softmax H7]``.

    The head conv (channels -> channels) is built when ``conv`` or when ``at``
    is H1-H3; the softmax only when ``at`` is H7 (the model then returns probabilities).
    """
    _check_position(at, HEAD_POSITION_NAMES, "the head")
    _check_p(p, "head_p")
    slots: list[Slot] = []
    if conv or at in ("H1", "H2", "H3"):
        slots += ["H1", conv1x1(channels, channels), "H2", nn.BatchNorm2d(channels), "H3", nn.ReLU()]
    slots += ["H4", nn.AdaptiveAvgPool2d(1), nn.Flatten(), "H5", nn.Linear(channels, num_classes), "H6"]
    if at == "H7":
        slots += [nn.Softmax(dim=1), "H7"]
    return with_dropout(slots, at, p)


def _init(model: nn.Module) -> None:
    """He initialisation for convs, BN weight 1 and bias 0 (He et al. 2016a)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _Network(nn.Module):
    """stem -> stages -> final -> head; ``model.features`` is stem, stages and final."""

    outputs_probabilities: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------
# The residual networks
# ----------------------------------------------------------------------------

class PreResNet(_Network):
    """Pre-activation ResNet for 28x28 and 32x32 inputs (He et al. 2016b).

    Three stages of widths ``width, 2*width, 4*width`` (times 4 at the output
    of a bottleneck), stride 2 at the start of stages 2 and 3, a 1x1 conv
    projection on the shortcut where the shape changes, a 3x3 stem conv and a
    final BN-ReLU. ``depth`` is 6n+2 for basic blocks, 9n+2 for bottlenecks.

    ``dropout_at`` (P0-P7, Kim et al. Figure 2) puts ``nn.Dropout(p)`` at that
    position in *every* block; ``head_dropout_at`` (H1-H7, Figure 4) one in the
    head with ``head_p`` (default ``p``). See the module docstring for the table.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 block: str = "basic", dropout_at: str | None = None, head_dropout_at: str | None = None,
                 p: float = 0.1, head_p: float | None = None, head_conv: bool = False):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block type {block!r}; valid block types are {', '.join(BLOCKS)}")
        n = _check_depth(depth, block)
        _check_position(dropout_at, POSITION_NAMES, f"a PreResNet {block} block")
        p = _check_p(p)
        head_p = p if head_p is None else _check_p(head_p, "head_p")
        self.depth, self.block, self.dropout_at, self.head_dropout_at = depth, block, dropout_at, head_dropout_at
        blocks: list[nn.Module] = []
        cin = width
        for stage in range(3):
            planes = width * 2**stage
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                if block == "basic":
                    blocks.append(preact_basic_block(cin, planes, stride, dropout_at, p))
                    cin = planes
                else:
                    blocks.append(preact_bottleneck_block(cin, planes, stride, dropout_at, p))
                    cin = 4 * planes
        self.features = nn.Sequential(
            conv3x3(in_channels, width),                        # stem
            *blocks,
            nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU()),      # final BN-ReLU of the trunk
        )
        self.head = make_head(cin, num_classes, head_dropout_at, head_p, head_conv)
        self.outputs_probabilities = head_dropout_at == "H7"
        _init(self)

    @property
    def blocks(self) -> list[ResidualBlock]:
        """The residual blocks, in order."""
        return [m for m in self.features if isinstance(m, ResidualBlock)]


class ResNetV1(_Network):
    """The original, post-activation ResNet for 28x28 and 32x32 inputs (He et al. 2016a).

    Basic blocks ``ReLU([Conv-BN-ReLU-Conv-BN] + shortcut)``, depth 6n+2, a
    3x3 Conv-BN-ReLU stem, three stages of widths ``width, 2*width, 4*width``
    and a 1x1 Conv-BN projection shortcut where the shape changes. Dropout
    positions P0-P6 as in the module table; Guideline 1 is P6, the end of the
    branch (Kim et al. Section 3.1, Table 3).
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 dropout_at: str | None = None, head_dropout_at: str | None = None,
                 p: float = 0.1, head_p: float | None = None, head_conv: bool = False):
        super().__init__()
        n = _check_depth(depth, "basic")
        _check_position(dropout_at, tuple(POSITIONS["resnetv1"]), "a ResNetV1 block")
        p = _check_p(p)
        head_p = p if head_p is None else _check_p(head_p, "head_p")
        self.depth, self.block, self.dropout_at, self.head_dropout_at = depth, "basic", dropout_at, head_dropout_at
        blocks: list[nn.Module] = []
        cin = width
        for stage in range(3):
            planes = width * 2**stage
            for i in range(n):
                blocks.append(v1_basic_block(cin, planes, 2 if (stage > 0 and i == 0) else 1, dropout_at, p))
                cin = planes
        self.features = nn.Sequential(
            nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU()),  # stem
            *blocks,
        )
        self.head = make_head(cin, num_classes, head_dropout_at, head_p, head_conv)
        self.outputs_probabilities = head_dropout_at == "H7"
        _init(self)

    @property
    def blocks(self) -> list[ResidualBlock]:
        return [m for m in self.features if isinstance(m, ResidualBlock)]


ARCHS: tuple[str, ...] = ("preresnet", "resnetv1")


@dataclass(frozen=True)
class NetConfig:
    """One residual network of chapters 3-4, nanoGPT-style: everything :func:`build` needs.

    ``arch`` "preresnet" (``block`` "basic" or "bottleneck") or "resnetv1";
    ``depth`` 6n+2 (basic) or 9n+2 (bottleneck); stage widths ``width, 2 width,
    4 width``; ``dropout_at`` P0-P7 in every block and ``head_dropout_at`` H1-H7
    in the head (Kim et al. Figures 2 and 4), with drop probabilities ``p`` and
    ``head_p`` (None: ``p``); ``head_conv`` adds the head's 1x1 Conv-BN-ReLU.
    """

    arch: str = "preresnet"
    block: str = "basic"
    depth: int = 20
    width: int = 16
    dropout_at: str | None = None
    p: float = 0.1
    head_dropout_at: str | None = None
    head_p: float | None = None
    head_conv: bool = False
    in_channels: int = 1
    num_classes: int = 10


def build(cfg: NetConfig) -> nn.Module:
    """The network ``cfg`` describes (a :class:`PreResNet` or :class:`ResNetV1`)."""
    common = dict(num_classes=cfg.num_classes, in_channels=cfg.in_channels, width=cfg.width,
                  dropout_at=cfg.dropout_at, head_dropout_at=cfg.head_dropout_at, p=cfg.p,
                  head_p=cfg.head_p, head_conv=cfg.head_conv)
    if cfg.arch == "resnetv1":
        if cfg.block != "basic":
            raise ValueError(f"a ResNetV1 has basic blocks only, got block={cfg.block!r}")
        return ResNetV1(cfg.depth, **common)
    if cfg.arch == "preresnet":
        return PreResNet(cfg.depth, block=cfg.block, **common)
    raise ValueError(f"unknown arch {cfg.arch!r}; valid archs are {', '.join(ARCHS)}")


# ----------------------------------------------------------------------------
# Small non-residual networks for chapters 1-2
# ----------------------------------------------------------------------------

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
        _check_position(dropout_at, tuple(PLAIN_POSITIONS), "an MLP")
        p = _check_p(p)
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
        _check_position(dropout_at, ("before_bn", "after_last_bn"), "a CNN")
        p = _check_p(p)
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


# ----------------------------------------------------------------------------
# Chapter 4 support: moving the head's dropout on a trained network
# ----------------------------------------------------------------------------

def with_head_dropout(model: nn.Module, at: str | None, p: float = 0.1) -> nn.Module:
    """A copy of ``model`` whose head has one ``nn.Dropout(p)`` at ``at`` (H1-H7, or None)
    and otherwise the *trained* weights and BN statistics of ``model``'s head.

    The trunk (``model.features``) is deep-copied unchanged; the head is rebuilt
    with :func:`make_head` and its weight layers (head conv, BN, FC) take the
    values of the old ones, in order. A model whose head has no 1x1 conv cannot
    get dropout at H1-H3 (there is no trained conv to copy). With ``at="H7"``
    the copy returns probabilities (``outputs_probabilities = True``).
    Used by chapter 4 to put dropout at H4-H7 of one trained network and
    compare the losses each position produces (Kim et al. Section 2.4).
    """
    import copy

    _check_position(at, HEAD_POSITION_NAMES, "the head")
    _check_p(p)
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Sequential):
        raise ValueError("model has no nn.Sequential `head`; with_head_dropout needs a droplab network "
                         "(PreResNet, ResNetV1 or CNN)")
    weighted = lambda seq: [m for m in seq if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]  # noqa: E731
    old = weighted(head)
    has_conv = any(isinstance(m, nn.Conv2d) for m in old)
    if at in ("H1", "H2", "H3") and not has_conv:
        raise ValueError(f"dropout at {at} needs the head's 1x1 conv, but this model's head has none; "
                         f"build the model with head_conv=True (or choose H4-H7)")
    fc = old[-1]
    new_head = make_head(fc.in_features, fc.out_features, at, p, conv=has_conv)
    new = weighted(new_head)
    for src, dst in zip(old, new):
        dst.load_state_dict(src.state_dict())
    out = copy.deepcopy(model)
    out.head = new_head.to(next(model.parameters()).device)
    out.outputs_probabilities = at == "H7"
    if hasattr(out, "head_dropout_at"):
        out.head_dropout_at = at
    return out


# ----------------------------------------------------------------------------
# Chapter 5 support: dropout inserted into a built (or pre-trained) network
# ----------------------------------------------------------------------------

def insert_dropout(model: nn.Module, after: type[nn.Module], p: float,
                   index: int | Sequence[int] | None = None) -> nn.Module:
    """Put ``nn.Dropout(p)`` right after layers of type ``after`` inside ``model``; return ``model``.

    The ``after`` layers are counted in the order of ``model.modules()``, which
    for droplab's networks is the forward order (trunk and head are
    ``nn.Sequential`` in execution order). ``index`` picks the k-th of them
    (0-based, negative from the end; a sequence picks several), None picks all.
    Each picked layer must sit in an ``nn.Sequential``. Works in place (weights
    are kept, the new layers take the model's train/eval mode) and returns
    ``model``, so that a builder is one expression::

        insert_dropout(CNN(), nn.ReLU, 0.3, index=0)    # after the first BN-ReLU ("early")
        insert_dropout(CNN(), nn.ReLU, 0.3)             # after every BN-ReLU
        insert_dropout(CNN(), nn.Flatten, 0.3)          # after GAP, before the FC layer (H5)
    """
    p = _check_p(p)
    found = [m for m in model.modules() if isinstance(m, after)]
    if not found:
        raise ValueError(f"model has no {after.__name__} layer to put dropout after")
    if index is None:
        picked = found
    else:
        wanted = [index] if isinstance(index, int) else list(index)
        bad = [i for i in wanted if not -len(found) <= i < len(found)]
        if bad:
            raise ValueError(f"index {bad} out of range: the model has {len(found)} {after.__name__} "
                             f"layers (valid indices {-len(found)} .. {len(found) - 1})")
        picked = [found[i] for i in wanted]
    targets = {id(m) for m in picked}
    parents = {}
    for parent in model.modules():
        for child in parent.children():
            if id(child) in targets:
                if not isinstance(parent, nn.Sequential):
                    raise ValueError(f"a picked {after.__name__} sits in a {type(parent).__name__}, not in an "
                                     f"nn.Sequential, so there is no 'right after it' to insert dropout into")
                parents[id(parent)] = parent
    for parent in parents.values():
        layers: list[nn.Module] = []
        for child in parent:
            layers.append(child)
            if id(child) in targets:
                drop = nn.Dropout(p)
                drop.train(child.training)
                layers.append(drop)
        for name in list(parent._modules):
            del parent._modules[name]
        for i, layer in enumerate(layers):
            parent.add_module(str(i), layer)
    return model


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the last ``nn.Linear`` of ``model`` by a fresh one with ``num_classes`` outputs; return ``model``.

    The new layer has the old one's input width, bias setting, device and
    dtype, and PyTorch's default initialisation (seed before calling it for a
    reproducible draw). In place. This is the usual first step of fine-tuning
    a pre-trained network on new classes (chapter 5, claim 4).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    owner, name, old = None, None, None
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                owner, name, old = parent, child_name, child
    if old is None:
        raise ValueError("model has no nn.Linear layer to replace")
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    setattr(owner, name, new.to(device=old.weight.device, dtype=old.weight.dtype))
    return model
