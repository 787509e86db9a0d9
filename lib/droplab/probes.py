"""Probes: measurements taken inside a network, trained or not, that train nothing (chapters 1, 2, 4-6).

- :func:`neighbour_recovery`: how much of what dropout removes from a feature
  map the neighbours still hold (element vs spatial dropout, chapter 1);
- :func:`bn_variance_shift` and :class:`BNShift`: the variance every BN layer
  sees at test time beside the running variance it normalizes with (Li et al.
  2019; chapters 2 and 5);
- :func:`norm_shift` and :class:`NormShift`: Delta at the input and at the
  output of every BatchNorm, GroupNorm and LayerNorm, training vs inference
  (chapter 6), and :func:`norm_after_dropout`, the module test behind it:
  Dropout(p) right before one norm;
- :func:`per_sample_losses`: the loss and gradient norm each sample gets with
  fresh dropout masks (Kim et al. Section 2.4; chapter 4);
- :func:`gradient_noise`: the spread of mini-batch gradients with and without
  dropout (chapter 5).

Every probe leaves the model as it found it (modes, BN buffers, gradients)
and draws its masks from :func:`droplab.dropout.seeded_masks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from droplab.dropout import (
    check_p,
    dropout_modules,
    is_dropout,
    keep_modes,
    mask,
    saved_buffers,
    seeded_masks,
    set_dropout,
)
from droplab.inconsistency import default_batch
from droplab.models import norm2d
from droplab.train import EPS, criterion, model_device, outputs_probabilities, stats_for, to_device


def neighbour_recovery(
    features: torch.Tensor,
    p: float,
    spatial: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """How much of what dropout removes from a feature map can be read back from the neighbours.

    Drops elements of ``features`` (N, C, H, W) with probability ``p``: one
    coin per element (``spatial=False``, ``nn.Dropout``) or one per channel
    (``spatial=True``, ``nn.Dropout2d``, Tompson et al. 2015). Each dropped
    element is then predicted from the average of its *kept* 4-neighbours in
    the same channel and sample, by a per-channel least-squares line; an
    element with no kept neighbour (always the case for spatial dropout) is
    predicted by its channel's mean. Returns, as fractions of the total
    variance of ``features`` around the channel means:

    - ``"dropped"``: the variance in the dropped elements (about ``p``);
    - ``"unrecoverable"``: the squared error left after the prediction, i.e.
      the information the next layer cannot read back from the same channel;
    - ``"recovered"``: ``1 - unrecoverable / dropped``, the R^2 of the prediction.

    For spatial dropout ``unrecoverable`` equals ``dropped``; for element
    dropout on spatially correlated maps it is much smaller.
    """
    check_p(p)
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W); got shape {tuple(features.shape)}")
    x = features.detach().to(torch.float64).cpu()
    N, C, H, W = x.shape
    shape = (N, C, 1, 1) if spatial else (N, C, H, W)
    m = mask(shape, p, generator=generator, dtype=torch.float64).expand(N, C, H, W).contiguous()
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    kernel = kernel.view(1, 1, 3, 3).repeat(C, 1, 1, 1)
    total = F.conv2d(x * m, kernel, padding=1, groups=C)
    count = F.conv2d(m, kernel, padding=1, groups=C)
    mu = x.mean((0, 2, 3), keepdim=True)
    dropped = m == 0
    usable = (dropped & (count > 0)).to(torch.float64)
    a = torch.where(count > 0, total / count.clamp_min(1.0), mu.expand_as(x))
    # per-channel least squares y = ym + b (a - am) over the usable elements
    n_c = usable.sum((0, 2, 3), keepdim=True)
    safe = n_c.clamp_min(1.0)
    am = (a * usable).sum((0, 2, 3), keepdim=True) / safe
    ym = (x * usable).sum((0, 2, 3), keepdim=True) / safe
    cov = ((a - am) * (x - ym) * usable).sum((0, 2, 3), keepdim=True)
    var = ((a - am) ** 2 * usable).sum((0, 2, 3), keepdim=True)
    b = torch.where(var > 0, cov / var.clamp_min(1e-300), torch.zeros_like(var))
    fitted = torch.where((usable > 0) & (n_c >= 3), ym + b * (a - am), mu.expand_as(x))
    sst = ((x - mu) ** 2).sum()
    lost = ((x - mu) ** 2 * dropped).sum()
    sse = ((x - fitted) ** 2 * dropped).sum()
    return {
        "dropped": (lost / sst).item(),
        "unrecoverable": (sse / sst).item(),
        "recovered": (1.0 - sse / lost).item() if lost > 0 else 0.0,
    }


class _Moments:
    """Per-channel mean and (biased) variance of a stream of tensors, in float64, merged
    chunk by chunk (Chan et al. 1979) over every dimension but ``channel_dim``."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, h: torch.Tensor, channel_dim: int) -> None:
        h = h.detach()
        h = h.cpu() if h.device.type == "mps" else h
        flat = h.to(torch.float64).movedim(channel_dim, -1).reshape(-1, h.shape[channel_dim])
        n_b, mean_b = flat.shape[0], flat.mean(0)
        m2_b = ((flat - mean_b) ** 2).sum(0)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / n
        self.n = n

    @property
    def var(self) -> torch.Tensor:
        return self.m2 / self.n

    @property
    def square_mean(self) -> torch.Tensor:
        return self.var + self.mean**2


@dataclass
class BNShift:
    """What one batch normalization layer sees at test time, beside what it normalizes with.

    ``input_mean`` / ``input_var`` (per channel, float64) are the statistics of
    the layer's input over the test batch (and spatial positions), with the
    model in eval mode; ``running_mean`` / ``running_var`` are the buffers the
    layer normalizes with, estimated during training.
    """

    name: str
    depth: int
    input_mean: torch.Tensor
    input_var: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    @property
    def ratios(self) -> torch.Tensor:
        """Per channel: test-time input variance / running variance (1 = no shift)."""
        return self.input_var / self.running_var

    @property
    def ratio(self) -> float:
        """The per-channel ratios averaged over channels: the variance shift of this layer.

        BN's output at test time has ``ratio`` times the variance (before its
        affine scale) that it had in training; < 1 means dropout upstream made
        the training variance larger than the test variance (Li et al. 2019).
        """
        return self.ratios.mean().item()


def bn_variance_shift(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int = 1024,
    dropout: bool = False,
) -> list[BNShift]:
    """For every BatchNorm layer of ``model``, in the order the forward pass reaches it, the
    variance its input actually has at test time beside the running variance it normalizes with.

    Runs ``model`` in eval mode on ``x`` (chunks of ``batch_size``, no
    gradients) with a forward hook on every BN layer that accumulates the
    mean and variance of the layer's input per channel (over the batch and
    spatial positions, in float64, biased). ``dropout=True`` keeps the dropout
    layers sampling masks while BN uses its running statistics (MC dropout).
    Modes are restored afterwards; no buffer changes. This is the measurement
    behind Li et al. (CVPR 2019, Figure 1) and the example of Kim et al.
    Section 2.1: a ratio ``BNShift.ratio`` below 1 is a variance shift.
    """
    bns = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("the model has no batch normalization layer: there is no running variance to compare with")
    names = {id(m): name for name, m in bns}
    acc: dict[int, _Moments] = {}  # in the order the layers are reached

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        acc.setdefault(id(module), _Moments()).add(inputs[0], channel_dim=1)

    handles = [m.register_forward_hook(hook) for _, m in bns]
    try:
        with keep_modes(model), torch.no_grad():
            model.eval()
            set_dropout(model, dropout)
            for chunk in torch.split(x, batch_size):
                model(chunk)
    finally:
        for h in handles:
            h.remove()
    modules = {id(m): m for _, m in bns}
    out = []
    for depth, (key, mom) in enumerate(acc.items(), start=1):
        bn = modules[key]
        out.append(BNShift(
            name=names[key],
            depth=depth,
            input_mean=mom.mean.cpu(),
            input_var=mom.var.cpu(),
            running_mean=bn.running_mean.detach().to(torch.float64).cpu(),
            running_var=bn.running_var.detach().to(torch.float64).cpu(),
        ))
    return out


NORM_KINDS: tuple[str, ...] = ("batch", "group", "layer")


def norm_kind(module: nn.Module) -> str | None:
    """ "batch", "group" or "layer" for a normalization layer (``GroupNorm(1, C)`` and
    ``nn.LayerNorm`` are LayerNorm), None for any other module."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batch"
    if isinstance(module, nn.LayerNorm) or (isinstance(module, nn.GroupNorm) and module.num_groups == 1):
        return "layer"
    return "group" if isinstance(module, nn.GroupNorm) else None


@dataclass
class NormShift:
    """What one normalization layer receives and returns in training and at inference (chapter 6).

    ``input_ratio`` is Delta at its input, Var(inference) / Var(training) per
    channel averaged over channels (Li et al.'s variance shift, Eq. 6 for a
    dropout right before it). ``output_ratio`` is the same for the scale of
    its normalized output before the affine ``weight`` and ``bias``: the mean
    square of that output, averaged over channels, at inference over in
    training. In training it is 1 for every norm; a BN normalizes at inference
    with running statistics gathered in training, so its output keeps the
    shift; GroupNorm and LayerNorm normalize every group of every sample to
    mean square 1 with its own statistics, so their output ratio is 1.
    """

    name: str
    kind: str
    depth: int
    input_ratio: float
    output_ratio: float
    after_dropout: bool = False   # a dropout layer comes right before it in its nn.Sequential


def norm_shift(model: nn.Module, x: torch.Tensor, *, seed: int = 0, batch_size: int = 1024) -> list[NormShift]:
    """For every normalization layer of ``model`` (BatchNorm, GroupNorm, LayerNorm), in the
    order the forward pass reaches it: Delta at its input and at its output (:class:`NormShift`).

    Two passes over ``x`` (chunks of ``batch_size``, no gradients): the
    training one in train mode (dropout on with masks from ``seed``, BN on
    batch statistics, its running buffers restored afterwards) and the
    inference one in eval mode. Forward hooks gather each layer's input and
    (affine map undone) output moments per channel (dimension 1; the last one
    for ``nn.LayerNorm``, which normalizes over it, one-dimensional
    ``normalized_shape``). Modes and buffers are left as they were.
    """
    norms = [(name, m) for name, m in model.named_modules() if norm_kind(m) is not None]
    if not norms:
        raise ValueError("the model has no normalization layer (BatchNorm, GroupNorm or LayerNorm) to probe")
    passes: dict[str, dict[int, tuple[_Moments, _Moments]]] = {"train": {}, "eval": {}}
    current: dict[int, tuple[_Moments, _Moments]] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        dim = -1 if isinstance(module, nn.LayerNorm) else 1
        m_in, m_out = current.setdefault(id(module), (_Moments(), _Moments()))
        m_in.add(inputs[0], channel_dim=dim)
        w, b = getattr(module, "weight", None), getattr(module, "bias", None)
        shape = [1] * out.dim()
        shape[dim] = -1
        if b is not None:
            out = out - b.detach().reshape(shape)
        if w is not None:
            out = out / w.detach().reshape(shape)
        m_out.add(out, channel_dim=dim)              # the normalized output before the affine map

    handles = [m.register_forward_hook(hook) for _, m in norms]
    try:
        with keep_modes(model), saved_buffers(model), torch.no_grad():
            for mode in ("train", "eval"):
                current = passes[mode]
                model.train(mode == "train")
                with seeded_masks(seed, x.device):
                    for chunk in torch.split(x, batch_size):
                        model(chunk)
    finally:
        for h in handles:
            h.remove()
    modules = dict(norms)
    names = {id(m): name for name, m in norms}
    after = {id(b) for seq in model.modules() if isinstance(seq, nn.Sequential)
             for a, b in zip(list(seq)[:-1], list(seq)[1:]) if is_dropout(a)}
    out = []
    for depth, key in enumerate(passes["train"], start=1):
        (tr_in, tr_out), (ev_in, ev_out) = passes["train"][key], passes["eval"][key]
        name = names[key]
        out.append(NormShift(name=name, kind=norm_kind(modules[name]), depth=depth,
                             input_ratio=(ev_in.var / tr_in.var).mean().item(),
                             output_ratio=(ev_out.square_mean.mean() / tr_out.square_mean.mean()).item(),
                             after_dropout=key in after))
    return out


def norm_after_dropout(norm: str, p: float, mean: float = 0.0, var: float = 1.0, channels: int = 16,
                       batch: int | None = None, seed: int = 0) -> NormShift:
    """Dropout(p) right before one normalization layer, ``models.norm2d(norm, channels)``
    (BN, GroupNorm in groups of 4 channels, or LayerNorm), on features N(``mean``, ``var``)
    of shape (``batch``, ``channels``, 4, 4): Delta at the layer's input and output
    (:func:`norm_shift`, chapter 6). A BN first gathers its running statistics over the
    same features with dropout on (training passes, cumulative average), as it does in a
    network trained with dropout before it. ``batch`` defaults to the module tests' size
    for the scale in force (:func:`droplab.inconsistency.default_batch`).
    Formulas: :func:`droplab.variance.dropout_ratio` at the input,
    :func:`droplab.variance.norm_output_ratio` at the output."""
    check_p(p)
    n = batch or default_batch()
    x = mean + math.sqrt(var) * torch.randn(n, channels, 4, 4, generator=torch.Generator().manual_seed(seed))
    block = nn.Sequential(nn.Dropout(p), norm2d(norm, channels))
    if norm == "batch":
        block[1].momentum = None
        block.train()
        with torch.no_grad(), seeded_masks(seed + 1):
            for chunk in torch.split(x, 256):
                block(chunk)
    return norm_shift(block, x, seed=seed + 2, batch_size=256)[0]


def per_sample_losses(model: nn.Module, data: Any, samples: int = 8, *, seed: int = 0,
                      batch_size: int = 1024, stats: Any = None) -> dict[str, torch.Tensor]:
    """The loss each sample gets in training, with fresh dropout masks, and its gradient norm.

    Runs ``model`` with its dropout layers in train mode and everything else
    (BN included) in eval mode, so that samples do not interact and every
    number below belongs to one sample and one mask draw. For each of
    ``samples`` draws of the masks it records, per sample:

    - ``"loss"`` (samples, N): the training loss of :func:`criterion`, not
      averaged: cross-entropy on logits, or ``-log(max(y_hat_c, 1e-12))`` for a
      model that outputs probabilities (dropout at H7);
    - ``"grad_norm"`` (samples, N): the Euclidean norm of the gradient of that
      loss with respect to the head's input (the last feature map, from which
      the update of every trunk weight is built); for a model without a
      ``head`` with respect to the model's input.

    Also returned: ``"correct"`` (N,), whether the eval-mode prediction (dropout
    off) is right, and ``"eval_loss"`` (N,), the eval-mode loss. Tensors are on
    the CPU. Modes are restored. The masks come from the stream of
    :func:`~droplab.dropout.seeded_masks` for ``seed`` (the global random state is left as it was). Kim et al. Section
    2.4 argue that dropout at H6/H7 gives correctly classified samples large
    losses; this is the measurement.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    dev = model_device(model)
    x_all, y_all = to_device(data, dev, stats_for(model, data, stats))
    probs = outputs_probabilities(model)
    split = hasattr(model, "head") and hasattr(model, "features")
    trunk = model.features if split else nn.Identity()
    head = model.head if split else model

    def loss_per_sample(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if probs:
            return -torch.log(out.float().clamp_min(EPS)).gather(1, y[:, None]).squeeze(1)
        return F.cross_entropy(out.float(), y, reduction="none")

    was_training = model.training
    losses = torch.empty(samples, len(y_all))
    norms = torch.empty(samples, len(y_all))
    try:
        model.eval()
        with torch.no_grad():
            outs = torch.cat([model(x_all[i:i + batch_size]) for i in range(0, len(x_all), batch_size)])
            correct = (outs.argmax(1) == y_all).cpu()
            eval_loss = loss_per_sample(outs, y_all).cpu()
        set_dropout(model, True)
        trunk_is_random = bool(dropout_modules(trunk))
        with seeded_masks(seed, dev):
            for i in range(0, len(x_all), batch_size):
                x, y = x_all[i:i + batch_size], y_all[i:i + batch_size]
                h = None
                for t in range(samples):
                    if h is None or trunk_is_random:   # a trunk without dropout is computed once
                        with torch.no_grad():
                            h = trunk(x)
                    h = h.detach().requires_grad_(True)
                    loss = loss_per_sample(head(h), y)
                    (grad,) = torch.autograd.grad(loss.sum(), h)
                    losses[t, i:i + len(y)] = loss.detach().cpu()
                    norms[t, i:i + len(y)] = grad.flatten(1).norm(dim=1).cpu()
    finally:
        model.train(was_training)
    return {"loss": losses, "grad_norm": norms, "correct": correct, "eval_loss": eval_loss}


def gradient_noise(model: nn.Module, data: Any, batch_size: int, num_batches: int = 64, *,
                   dropout: bool = True, seed: int = 0, stats: Any = None,
                   replacement: bool = True) -> dict[str, float]:
    """The spread of mini-batch gradients around their mean, at the model's current weights.

    Draws ``num_batches`` mini-batches of ``batch_size`` samples from ``data``,
    computes the gradient of the training loss (:func:`criterion`) on each,
    with the dropout layers sampling masks (``dropout=True``) or off, and
    returns, in float64:

    - ``"noise"``: the trace of the covariance of the mini-batch gradient,
      ``sum_k |g_k - g_mean|^2 / (K - 1)``. With ``replacement`` (the default)
      every sample of a batch is drawn independently, so without dropout the
      noise is ``tr(Sigma) / batch_size`` exactly, Sigma the covariance of the
      per-sample gradients over ``data``; dropout's masks, drawn per sample,
      are independent too, so its share falls as ``1 / batch_size`` as well.
      ``replacement=False`` draws each batch without replacement, as an epoch
      does; the sampling part then shrinks by ``(N - B) / (N - 1)``;
    - ``"signal"``: ``|g_mean|^2``, the squared norm of the mean gradient;
    - ``"batch_size"``, ``"num_batches"``.

    Every other module is in train mode (BN uses batch statistics, as in
    training). Weights, BN buffers and train/eval modes are restored; the batches
    and masks come from streams seeded with ``seed`` (the global random state is
    left as it was). Chapter 5 uses it for "small batches plus dropout
    destabilize training".
    """
    if batch_size < 2 or num_batches < 2:
        raise ValueError(f"need batch_size >= 2 (BN) and num_batches >= 2 (a spread), got {batch_size}, {num_batches}")
    dev = model_device(model)
    x_all, y_all = to_device(data, dev, stats_for(model, data, stats))
    n = len(y_all)
    if batch_size > n and not replacement:
        raise ValueError(f"batch_size {batch_size} is larger than the data ({n} samples)")
    params = [t for t in model.parameters() if t.requires_grad]
    saved_grads = [t.grad for t in params]
    loss_fn = criterion(model)
    gen = torch.Generator().manual_seed(seed)
    mean = None
    m2 = 0.0  # Welford: sum of squared deviations from the running mean, summed over parameters
    try:
        with saved_buffers(model), keep_modes(model), seeded_masks(seed, dev):
            model.train()
            set_dropout(model, dropout)
            for _ in range(num_batches):
                idx = (torch.randint(0, n, (batch_size,), generator=gen) if replacement
                       else torch.randperm(n, generator=gen)[:batch_size]).to(dev)
                grads = torch.autograd.grad(loss_fn(model(x_all[idx]), y_all[idx]), params)
                g = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in grads])
                if mean is None:
                    mean, k = g.clone(), 1
                    continue
                k += 1
                delta = g - mean
                mean += delta / k
                m2 += float(delta.dot(g - mean))
    finally:
        for t, grad in zip(params, saved_grads):
            t.grad = grad
    signal = float(mean.dot(mean))
    noise = m2 / (num_batches - 1)
    return {"noise": noise, "signal": signal, "batch_size": batch_size, "num_batches": num_batches}
