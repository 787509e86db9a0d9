"""Block layouts: where every dropout position sits, written once (Kim et al. Figures 2 and 4; chapters 3, 4, 6).

A *layout* is a block's slot list in execution order: the layers of the
branch (or of the head) with the names of the dropout positions between them.
The PreResNet basic block of Kim et al. Figure 2 is::

    x -> [P0] -> split -> shortcut ---------------------------------------------+
                      \\-> P1 BN1 P2 ReLU P3 Conv1 P4 BN2 P5 ReLU P6 Conv2 P7 -> + -> out

P0 sits on *the block input*, before the split, so the shortcut sees the dropped
input too; P1-P7 sit in *the branch*. Everything that needs a layout reads it
from here: :mod:`droplab.models` and :mod:`droplab.transformer` build their
``nn.Sequential`` by filling a layout with modules (:func:`fill`, which checks
that each module is the kind of layer the layout names), the fully connected
blocks of :mod:`droplab.inconsistency` fill the PreResNet layout with linear
layers, and :func:`droplab.plots.position_diagram` draws a layout's boxes and
position names. What the book says about a position is derived from the same
slot list: :func:`neighbours` (the layers right before and after it) and
:func:`next_norm` (the first normalization its noise reaches).

==========================  ==========================================================  =========
layout (:data:`LAYOUTS`)    the block                                                   positions
==========================  ==========================================================  =========
``"preresnet-basic"``       PreResNet basic block (He et al. 2016b; Kim et al. Figure 2)  P0-P7
``"preresnet-bottleneck"``  PreResNet bottleneck block, three BN-ReLU-Conv stages         P0-P7
``"resnetv1"``              ResNetV1 basic block, a ReLU after the addition (He 2016a)    P0-P6
``"head"``                  the classification head (Kim et al. Figure 4)                 H1-H7
``"attention"``             a pre-LN transformer block's attention half (chapter 6)       T0-T2
``"mlp"``                   its MLP half                                                 T3, T4
==========================  ==========================================================  =========

In the bottleneck and ResNetV1 (the book's extension of Figure 2) P1-P3 sit
around the *first* BN-ReLU of the branch, P4-P6 around the *last* and P7 after
the last weight layer, so Guideline 1 ("after the last BN, before the last
weight layer"; for ResNetV1 "at the end of the branch", Kim et al. Section
3.1) is P6 in all three (:data:`GUIDELINE`). A pre-LN transformer block is two
residual blocks, attention then MLP; T0 is on the embeddings, once: the input
of the first block's attention branch (chapter 6). ``"P7path"``
(:data:`DROP_PATH`) is DropPath at P7's place (chapter 6).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from droplab.dropout import drop_path

# -------- Layers and layouts -------------------------------------------------------------

#: The module types each kind of layer may be filled with (:meth:`Layer.accepts`); any other
#: kind ("other": an embedding, the self-attention) takes any module.
KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "norm": (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm),
    "act": (nn.ReLU, nn.GELU),
    "weight": (nn.Conv2d, nn.Linear),
    "pool": (nn.AdaptiveAvgPool2d,),
    "flatten": (nn.Flatten,),
    "softmax": (nn.Softmax,),
}


@dataclass(frozen=True)
class Layer:
    """One layer of a layout: ``label`` is its name in the diagrams and in the table of
    positions ("BN1", "Conv2", "GAP"), ``kind`` what may fill it (:data:`KINDS`).

    ``drawn=False`` leaves it out of the diagrams (the head's Flatten). ``steps`` are
    what one module does inside (the self-attention: qkv, scores, softmax, ``. V``),
    positions included; a diagram draws the steps instead of the layer.
    """

    label: str
    kind: str = "other"
    drawn: bool = True
    steps: tuple[Entry, ...] = ()

    def accepts(self, module: nn.Module) -> bool:
        """Whether ``module`` may fill this layer (a BatchNorm, GroupNorm or LayerNorm for a norm, ...)."""
        return isinstance(module, KINDS.get(self.kind, nn.Module))

    def __str__(self) -> str:
        return self.label


#: A slot list entry: a position name or a layer.
Entry = str | Layer
#: What :func:`with_dropout` takes: a position name or a module.
Slot = str | nn.Module


@dataclass(frozen=True)
class Layout:
    """One block kind: its slot list and what the book says about each position.

    ``slots`` is the branch (or the head) in execution order. ``block_input`` is
    the position on the block input, before the split into shortcut and branch
    (P0; T0 for a transformer's attention half, once on the embeddings), None if
    there is none. ``residual``: the block adds a shortcut; ``after_addition``:
    layers after the addition (ResNetV1's ReLU). ``where`` says, for each position
    in order, where it sits; ``guideline`` lists the positions Kim et al.'s
    Guidelines 1-2 recommend, the one the book builds first; ``title`` names the block
    and ``source`` where it comes from.
    """

    name: str
    title: str
    slots: tuple[Entry, ...]
    where: Mapping[str, str]
    block_input: str | None = None
    residual: bool = True
    after_addition: tuple[Layer, ...] = ()
    guideline: tuple[str, ...] = ()
    source: str = ""

    @property
    def positions(self) -> tuple[str, ...]:
        """The position names in execution order, the block input first."""
        return positions_of(self.sequence())

    def sequence(self) -> tuple[Entry, ...]:
        """The block input's position, then every layer and position in execution order, the
        steps inside a layer in place of it (what a diagram draws, plus the undrawn layers)."""
        return ((self.block_input,) if self.block_input else ()) + flatten(self.slots)


def flatten(entries: Sequence[Entry]) -> tuple[Entry, ...]:
    """``entries`` with every layer that has ``steps`` replaced by its steps (recursively)."""
    out: list[Entry] = []
    for e in entries:
        out += flatten(e.steps) if isinstance(e, Layer) and e.steps else [e]
    return tuple(out)


def positions_of(entries: Sequence[Entry]) -> tuple[str, ...]:
    """The position names in a slot list, in execution order (inside its layers' steps too)."""
    return tuple(e for e in flatten(entries) if isinstance(e, str))


BN1, BN2, BN3 = Layer("BN1", "norm"), Layer("BN2", "norm"), Layer("BN3", "norm")
RELU = Layer("ReLU", "act")

#: The softmax over the attention scores and T1 after it: ``SelfAttention.attend``.
ATTEND: tuple[Entry, ...] = (Layer("softmax", "softmax"), "T1")
#: The self-attention as one module, up to its output projection (chapter 6).
SELF_ATTENTION = Layer("SelfAttention", steps=(
    Layer("Linear qkv", "weight"), Layer("QKᵀ/√d"), Layer("attend", steps=ATTEND), Layer("· V")))

#: The head in pieces, as :func:`head_slots` builds it: the head conv (H1-H3), pooling and FC, the softmax (H7).
HEAD_CONV: tuple[Entry, ...] = ("H1", Layer("Conv1x1", "weight"), "H2", Layer("BN", "norm"), "H3", Layer("act", "act"))
HEAD_POOL: tuple[Entry, ...] = ("H4", Layer("GAP", "pool"), Layer("Flatten", "flatten", drawn=False),
                                "H5", Layer("FC", "weight"), "H6")
HEAD_SOFTMAX: tuple[Entry, ...] = (Layer("softmax", "softmax"), "H7")

_BLOCK_INPUT = "block input, before the split into shortcut and branch"

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout(
        "preresnet-basic", "PreResNet basic block",
        ("P1", BN1, "P2", RELU, "P3", Layer("Conv1", "weight"), "P4", BN2, "P5", RELU, "P6",
         Layer("Conv2", "weight"), "P7"),
        {
            "P0": _BLOCK_INPUT,
            "P1": "start of the branch, before BN1",
            "P2": "after BN1",
            "P3": "after the first ReLU",
            "P4": "after Conv1, before BN2",
            "P5": "after BN2",
            "P6": "after the second ReLU, before Conv2 (Guideline 1)",
            "P7": "after Conv2, before the addition",
        },
        block_input="P0", guideline=("P6", "P5"), source="Kim et al. Figure 2; He et al. 2016b"),
    Layout(
        "preresnet-bottleneck", "PreResNet bottleneck block",
        ("P1", BN1, "P2", RELU, "P3", Layer("Conv1 1×1", "weight"), BN2, RELU, Layer("Conv2 3×3", "weight"),
         "P4", BN3, "P5", RELU, "P6", Layer("Conv3 1×1", "weight"), "P7"),
        {
            "P0": _BLOCK_INPUT,
            "P1": "start of the branch, before BN1",
            "P2": "after BN1",
            "P3": "after the first ReLU",
            "P4": "after Conv2, before BN3",
            "P5": "after BN3",
            "P6": "after the third ReLU, before Conv3 (Guideline 1)",
            "P7": "after Conv3, before the addition",
        },
        block_input="P0", guideline=("P6",), source="the book's extension of Kim et al. Figure 2"),
    Layout(
        "resnetv1", "ResNetV1 basic block",
        ("P1", Layer("Conv1", "weight"), "P2", BN1, "P3", RELU, "P4", Layer("Conv2", "weight"), "P5", BN2, "P6"),
        {
            "P0": _BLOCK_INPUT,
            "P1": "start of the branch, before Conv1",
            "P2": "after Conv1, before BN1",
            "P3": "after BN1",
            "P4": "after the ReLU, before Conv2",
            "P5": "after Conv2, before BN2",
            "P6": "after BN2, the end of the branch before the addition (Guideline 1)",
        },
        block_input="P0", after_addition=(RELU,), guideline=("P6",),
        source="Kim et al. Section 3.1, Table 3; He et al. 2016a"),
    Layout(
        "head", "Classification head", HEAD_CONV + HEAD_POOL + HEAD_SOFTMAX,
        {
            "H1": "head input, before the head conv (Conv1x1)",
            "H2": "after the head conv, before its BN",
            "H3": "after the head BN",
            "H4": "after the last activation, before GAP (Guideline 2)",
            "H5": "after GAP, before FC (the common practice)",
            "H6": "after FC, on the logits",
            "H7": "after softmax, on the probabilities",
        },
        residual=False, guideline=("H4", "H3"), source="Kim et al. Figure 4"),
    Layout(
        "attention", "Pre-LN transformer, attention half (T0 on the first block only)",
        (Layer("LN", "norm"), SELF_ATTENTION, Layer("Linear", "weight"), "T2"),
        {
            "T0": "on the embeddings (patches plus positions), once, before the first block",
            "T1": "on the attention probabilities, softmax(QK^T/sqrt(d)), before they weight V",
            "T2": "on the attention output after its projection (Linear), before the residual add (P7's place)",
        },
        block_input="T0", source="Dosovitskiy et al. 2021, Eq. 2"),
    Layout(
        "mlp", "Pre-LN transformer, MLP half",
        (Layer("LN", "norm"), Layer("Linear", "weight"), Layer("GELU", "act"), "T3", Layer("Linear", "weight"), "T4"),
        {
            "T3": "inside the MLP, after the activation, before the second linear layer (P6's place)",
            "T4": "on the MLP output after its second Linear, before the residual add (P7's place)",
        },
        source="Dosovitskiy et al. 2021, Eq. 3"),
)}

# -------- The names every other module reads ---------------------------------------------

POSITION_NAMES: tuple[str, ...] = LAYOUTS["preresnet-basic"].positions            # P0-P7
HEAD_POSITION_NAMES: tuple[str, ...] = LAYOUTS["head"].positions                  # H1-H7
TRANSFORMER_POSITION_NAMES: tuple[str, ...] = LAYOUTS["attention"].positions + LAYOUTS["mlp"].positions  # T0-T4
#: DropPath (Huang et al. 2016): a sample's whole branch dropped, at P7's place (chapter 6).
DROP_PATH = "P7path"

#: P0-P7, one column per residual block kind (chapter 3 prints it).
POSITIONS: dict[str, dict[str, str]] = {
    name: dict(LAYOUTS[name].where) for name in ("preresnet-basic", "preresnet-bottleneck", "resnetv1")}
HEAD_POSITIONS: dict[str, str] = dict(LAYOUTS["head"].where)
TRANSFORMER_POSITIONS: dict[str, str] = {**LAYOUTS["attention"].where, **LAYOUTS["mlp"].where}
#: Kim et al.'s Guidelines 1 (residual blocks) and 2 (the head): the positions each recommends,
#: the one the book builds first; P5 = P6 and H3 = H4 compute the same network (chapters 3, 4).
GUIDELINE: dict[str, tuple[str, ...]] = {name: lay.guideline for name, lay in LAYOUTS.items() if lay.guideline}


def layout(name: str) -> Layout:
    """The layout called ``name`` (an error lists the valid names)."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown block layout {name!r}; valid layouts are {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def check_position(at: str | None, valid: Sequence[str], where: str) -> str | None:
    """Return ``at`` if it is None or one of ``valid``, else raise a ValueError that lists them."""
    if at is not None and at not in valid:
        raise ValueError(f"unknown dropout position {at!r} for {where}; valid positions are "
                         f"{', '.join(valid)} (or None for no dropout)")
    return at


# -------- Building from a layout ---------------------------------------------------------

def fill(entries: Sequence[Entry] | str, *modules: nn.Module) -> list[Slot]:
    """The slot list ``entries`` (or the slots of the layout so named) with each layer replaced
    by the next of ``modules``, position names kept: what :func:`with_dropout` takes.

    Raises a ValueError when the number of modules differs from the number of layers, or
    when a module is not the kind of layer its slot names (:meth:`Layer.accepts`): the
    network then puts its positions where the diagrams and the table of positions say.
    """
    what = f"the {entries} layout" if isinstance(entries, str) else "the slot list"
    entries = layout(entries).slots if isinstance(entries, str) else tuple(entries)
    layers = [e for e in entries if isinstance(e, Layer)]
    if len(modules) != len(layers):
        raise ValueError(f"{what} has {len(layers)} layers ({', '.join(map(str, layers))}); "
                         f"got {len(modules)} modules: give one module per layer, in execution order")
    filled = iter(modules)
    out: list[Slot] = []
    for e in entries:
        if isinstance(e, Layer):
            m = next(filled)
            if not e.accepts(m):
                allowed = ", ".join(t.__name__.lstrip("_") for t in KINDS[e.kind])
                raise ValueError(f"the slot {e.label} of {what} is a {e.kind} layer ({allowed}); "
                                 f"got {type(m).__name__}: fill the layers in execution order")
            out.append(m)
        else:
            out.append(e)
    return out


def with_dropout(slots: Sequence[Slot], at: str | None, p: float,
                 layer: Callable[[float], nn.Module] = nn.Dropout) -> nn.Sequential:
    """An ``nn.Sequential`` of the modules in ``slots``, with ``layer(p)`` (``nn.Dropout(p)``) at
    every slot whose name equals ``at``; the other names are dropped from the sequence.
    ``at="P7path"`` puts :func:`droplab.dropout.drop_path` (DropPath) in the slot "P7"."""
    if at == DROP_PATH:
        at, layer = "P7", drop_path
    return nn.Sequential(*[layer(p) if s == at else s for s in slots
                           if isinstance(s, nn.Module) or s == at])


class ResidualBlock(nn.Module):
    """``out = post(branch(pre(x)) + shortcut(pre(x)))``: the one residual block of droplab.

    ``pre`` is the dropout on the block input (P0, else the identity), so the shortcut
    sees the dropped input too; ``shortcut`` is the identity or a projection; ``post``
    is the ReLU after the addition in ResNetV1 (else the identity). The convolutional
    blocks of :mod:`droplab.models`, the halves of a transformer block and the fully
    connected blocks of :mod:`droplab.inconsistency` are all this class.
    """

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None = None, pre: nn.Module | None = None,
                 post: nn.Module | None = None):
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.branch = branch
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.post = post if post is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        return self.post(self.branch(x) + self.shortcut(x))


def residual_block(name: str, branch: Sequence[nn.Module], at: str | None, p: float,
                   shortcut: nn.Module | None = None, post: nn.Module | None = None,
                   layer: Callable[[float], nn.Module] = nn.Dropout) -> ResidualBlock:
    """The residual block of layout ``name`` with ``branch`` filling its layers (:func:`fill`) and
    ``layer(p)`` at position ``at``: in the branch, or on the block input (P0) as ``pre``."""
    lay = layout(name)
    pre = layer(p) if at is not None and at == lay.block_input else None
    return ResidualBlock(with_dropout(fill(lay.slots, *branch), at, p, layer), shortcut, pre=pre, post=post)


def head_slots(at: str | None = None, conv: bool = False) -> tuple[Entry, ...]:
    """The head's slot list as built (Kim et al. Figure 4): the head conv (H1-H3) when ``conv``
    or when ``at`` is one of its positions, pooling and FC (H4-H6), the softmax only for H7
    (the model then returns probabilities)."""
    return ((HEAD_CONV if conv or at in positions_of(HEAD_CONV) else ()) + HEAD_POOL
            + (HEAD_SOFTMAX if at in positions_of(HEAD_SOFTMAX) else ()))


# -------- What the book says about a position, derived ------------------------------------

def _slot_list_of(entries: Sequence[Entry], position: str) -> tuple[Entry, ...] | None:
    """The slot list (``entries`` or the steps of one of its layers) that holds ``position``."""
    if position in entries:
        return tuple(entries)
    for e in entries:
        if isinstance(e, Layer) and e.steps:
            found = _slot_list_of(e.steps, position)
            if found is not None:
                return found
    return None


def neighbours(name: str, position: str, head_conv: bool = False) -> tuple[Layer | None, Layer | None]:
    """The layers right before and right after ``position`` in its ``nn.Sequential`` as built
    (None at either end of it): what a dropout layer there sits between.

    The block input (P0, T0) has none in the branch (``(None, None)``); DropPath (``"P7path"``)
    sits in P7's slot. For the head, ``head_conv`` says whether the head conv is built
    (:func:`head_slots`; it always is for H1-H3). Kim et al. Figures 2 and 4; chapter 4.
    """
    lay = layout(name)
    position = "P7" if position == DROP_PATH and "P7" in lay.positions else position
    check_position(position, lay.positions, f"the {name} layout")
    if position == lay.block_input:
        return None, None
    slots = head_slots(position, head_conv) if name == "head" else lay.slots
    entries = _slot_list_of(slots, position)
    i = entries.index(position)
    before = next((e for e in reversed(entries[:i]) if isinstance(e, Layer)), None)
    after = next((e for e in entries[i + 1:] if isinstance(e, Layer)), None)
    return before, after


#: What :func:`next_norm` answers when no norm follows in the block: the block output x_{l+1},
#: the input of the next block's first norm, after the shortcut has been added.
BLOCK_OUTPUT = "out"


def next_norm(name: str, position: str) -> str:
    """The label of the first normalization layer a dropout at ``position`` feeds, in
    execution order ("BN1", "BN2"), or :data:`BLOCK_OUTPUT` when the branch ends first: then
    the noise reaches the next block's first norm through the addition (Kim et al. Section
    2.3; chapter 3). DropPath (``"P7path"``) is P7."""
    lay = layout(name)
    position = "P7" if position == DROP_PATH and "P7" in lay.positions else position
    check_position(position, lay.positions, f"the {name} layout")
    seq = lay.sequence()
    after = seq[seq.index(position) + 1:]
    return next((e.label for e in after if isinstance(e, Layer) and e.kind == "norm"), BLOCK_OUTPUT)
