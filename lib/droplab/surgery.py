"""Surgery on a built network: put dropout in, swap it, rescale it, move it, replace the classifier.

Every function here edits a network that already exists (and may be
trained) and keeps its weights; none trains. What they are for:

- :func:`swap_dropout`: every dropout layer becomes ``make(old)``, e.g.
  uniform noise of matched strength (chapter 2); :func:`replace_dropout` is
  the case "every ``nn.Dropout`` becomes a :class:`droplab.dropout.Dropout`
  with another scaling rule" (chapter 1) and :func:`set_scaling` switches
  that rule afterwards (the repair of the forgotten scaling);
- :func:`insert_dropout`: dropout after chosen layers of a built network (chapters 2 and 5);
- :func:`with_head_dropout`: a copy of a trained network with its head's
  dropout moved to H1-H7 (chapter 4, Kim et al. Section 2.4);
- :func:`replace_classifier`: a fresh last layer for fine-tuning (chapter 5, claim 4);
- :func:`copy_weights`: one trained network's weights in a copy with dropout elsewhere (chapter 6).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from torch import nn

from droplab.blocks import HEAD_CONV, HEAD_POSITION_NAMES, check_position, positions_of
from droplab.dropout import Dropout, Scaling, check_p, check_scaling, is_dropout
from droplab.models import make_head


def swap_dropout(model: nn.Module, make: Callable[[nn.Module], nn.Module],
                 which: Callable[[nn.Module], bool] = is_dropout) -> int:
    """Replace every layer inside ``model`` for which ``which`` is true (default: every
    dropout layer, :func:`droplab.dropout.is_dropout`) by ``make(old_layer)``.

    In place; the new layer takes the old one's train/eval mode. Returns the
    number of layers replaced (``model`` itself is never replaced: wrap it in
    a container first). Example (chapter 2): the dropout layers of a CNN
    become uniform noise of matched strength::

        swap_dropout(net, lambda old: UniformDropout(matched_beta(old.p)))
    """
    count = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if which(child):
                new = make(child)
                new.train(child.training)
                setattr(parent, name, new)
                count += 1
    return count


def replace_dropout(model: nn.Module, scaling: Scaling = "inverted") -> int:
    """Replace every :class:`torch.nn.Dropout` inside ``model`` by a :class:`droplab.dropout.Dropout`.

    The new layers keep the rate ``p`` and use ``scaling`` (``"inverted"``,
    ``"classic"`` or ``"none"``), so a model from :mod:`droplab.models` can be
    trained with the classic rule, or with the bug of forgetting the scaling
    (chapter 1). Other dropout layers (``nn.Dropout2d``, ...) are left alone.
    :func:`swap_dropout` in place; returns the number of layers replaced.
    """
    check_scaling(scaling)
    return swap_dropout(model, lambda old: Dropout(old.p, scaling), which=lambda m: type(m) is nn.Dropout)


def set_scaling(model: nn.Module, scaling: Scaling) -> int:
    """Set the scaling rule of every :class:`droplab.dropout.Dropout` inside ``model``; return how many were set.

    Switching a model trained with ``"none"`` (the forgotten scaling) to
    ``"classic"`` for evaluation is the repair: it multiplies by ``q`` at test time.
    """
    check_scaling(scaling)
    layers = [m for m in model.modules() if isinstance(m, Dropout)]
    for m in layers:
        m.scaling = scaling
    return len(layers)


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
    check_p(p)
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


def _weight_layers(head: nn.Sequential) -> list[nn.Module]:
    """The layers of a head that hold trained values: head conv, BN, FC, in order."""
    return [m for m in head if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]


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
    check_position(at, HEAD_POSITION_NAMES, "the head")
    check_p(p)
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Sequential):
        raise ValueError("model has no nn.Sequential `head`; with_head_dropout needs a droplab network "  # noqa: TRY004
                         "(PreResNet, ResNetV1 or CNN)")
    old = _weight_layers(head)
    has_conv = any(isinstance(m, nn.Conv2d) for m in old)
    if at in positions_of(HEAD_CONV) and not has_conv:
        raise ValueError(f"dropout at {at} needs the head's 1x1 conv, but this model's head has none; "
                         f"build the model with head_conv=True (or choose H4-H7)")
    fc = old[-1]
    new_head = make_head(fc.in_features, fc.out_features, at, p, conv=has_conv)
    new = _weight_layers(new_head)
    for src, dst in zip(old, new):
        dst.load_state_dict(src.state_dict())
    out = copy.deepcopy(model)
    out.head = new_head.to(next(model.parameters()).device)
    out.outputs_probabilities = at == "H7"
    if hasattr(out, "head_dropout_at"):
        out.head_dropout_at = at
    return out


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


def copy_weights(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Give ``dst`` the parameters and buffers of ``src``, tensor by tensor in order; return ``dst``.

    For two networks that differ only in layers without weights, i.e. in where dropout
    sits (``networks.build`` of two configs that differ in ``dropout_at``): the
    state-dict keys then differ (a dropout layer shifts the indices after it) but
    the tensors come in the same order with the same shapes. Anything else is
    refused. ``input_stats`` (the normalization :func:`droplab.train.fit` keeps)
    is copied too. Chapter 6 puts dropout at each position of one trained ViT this way.
    """
    a, b = list(src.state_dict().items()), list(dst.state_dict().items())
    mismatch = [(ka, kb) for (ka, va), (kb, vb) in zip(a, b) if va.shape != vb.shape]
    if len(a) != len(b) or mismatch:
        raise ValueError(f"the two networks differ in more than where dropout sits: {len(a)} vs {len(b)} "
                         f"tensors" + (f", first different shapes at {mismatch[0][0]} / {mismatch[0][1]}"
                                       if mismatch else ""))
    dst.load_state_dict({kb: va for (_, va), (kb, _) in zip(a, b)})
    if hasattr(src, "input_stats"):
        dst.input_stats = src.input_stats  # type: ignore[assignment]
    return dst
