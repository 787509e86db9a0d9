"""Dropout written from scratch, and the primitives the rest of droplab builds on (chapter 1).

Notation. The library follows PyTorch: ``p`` is the probability of
**dropping** a unit. Kim et al. (UAI 2023) write *p* for the **keep**
probability; the book writes ``q = 1 - p`` for it. Every formula quoted from
the paper is rewritten with ``q``.

What is here, each once for the whole library:

- :func:`check_p`: the one check of a drop probability;
- :func:`mask`, :func:`dropout`, :class:`Dropout`: the three scaling rules
  (inverted; classic weight scaling at test time from Srivastava et al. 2014;
  and "none", the bug of forgetting to scale);
- :class:`SpatialDropout`: drop whole channels (Tompson et al. 2015);
  :class:`UniformDropout`: Li et al.'s (2019) uniform noise (chapter 2);
  :func:`drop_path`: drop a sample's whole residual branch (DropPath, chapter 6);
- :func:`expected_output_variance`: Kim et al. Eq. 6, the train-mode variance
  of dropout's output;
- :func:`is_dropout` and the mode switches built on it (:func:`set_dropout`,
  :func:`enable_dropout`, :func:`keep_modes`);
- what a measurement must leave as it found it: :func:`seeded_masks` (masks
  from a stream of their own, see :func:`mask_seed`) and :func:`saved_buffers`
  (BN running statistics);
- MC dropout (Gal & Ghahramani 2016): :func:`mc_dropout`, one loop
  :func:`mc_samples` and its three readings :func:`mc_predict`,
  :func:`mc_outputs`, :func:`mc_predict_train_mode`; :func:`predictive_entropy`,
  :func:`mutual_information`.

Editing the dropout layers of a built network (swap, rescale, insert) is
:mod:`droplab.surgery`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Scaling = Literal["inverted", "classic", "none"]
SCALINGS: tuple[str, ...] = ("inverted", "classic", "none")


def check_p(p: float, name: str = "p") -> float:
    """Return ``p`` if it is a valid drop probability, else raise a ValueError.

    Valid: ``0 <= p < 1`` (``p = 1`` would drop everything and make ``1/q``
    infinite); a number or an array of numbers. ``name`` is what the message
    calls it (``"head_p"``, ...).
    """
    try:
        arr = np.asarray([] if isinstance(p, (str, bytes)) else p, dtype=float)
    except (TypeError, ValueError):
        arr = np.asarray([])
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr >= 1):
        raise ValueError(
            f"{name} is the probability of dropping a unit (PyTorch convention) and must lie in "
            f"[0, 1), i.e. 0 <= {name} < 1; got {p!r}. Kim et al. write p for the keep probability: "
            f"if you have a keep probability q, pass {name} = 1 - q."
        )
    return p


def check_scaling(scaling: str) -> str:
    """Return ``scaling`` if it is one of :data:`SCALINGS`, else raise a ValueError that lists them."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {', '.join(map(repr, SCALINGS))}; got {scaling!r}")
    return scaling


def mask(
    shape: tuple[int, ...] | torch.Size,
    p: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A dropout mask of 0s and 1s: each entry is 1 (kept) with probability ``q = 1 - p``.

    This is the diagonal of Kim et al.'s matrix **M** (Definition 1), with
    ``m_ii ~ Bernoulli(q)``.
    """
    check_p(p)
    keep = torch.full(tuple(shape), 1.0 - p, dtype=dtype, device=device)
    return torch.bernoulli(keep, generator=generator)


def dropout(
    x: torch.Tensor,
    p: float,
    training: bool = True,
    scaling: Scaling = "inverted",
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
    return_mask: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """Dropout with drop probability ``p`` and keep probability ``q = 1 - p``.

    ==========  =============  ===========
    scaling     training       evaluation
    ==========  =============  ===========
    inverted    ``x * M / q``  ``x``        (PyTorch; Kim et al. Eqs. 1-2)
    classic     ``x * M``      ``x * q``    (Srivastava et al. 2014, weight scaling)
    none        ``x * M``      ``x``        (the bug: the scaling was forgotten)
    ==========  =============  ===========

    ``mask`` passes an explicit 0/1 mask (any shape that broadcasts against
    ``x``), so the same **M** can be applied twice, e.g. to check that ReLU and
    dropout commute (Kim et al. Proposition 1, Eq. 7). With ``return_mask``
    the mask used (None in evaluation) is returned as well.
    """
    check_p(p)
    check_scaling(scaling)
    q = 1.0 - p
    if not training:
        y = x * q if scaling == "classic" else x
        return (y, None) if return_mask else y
    m = _mask_for(x, p, generator) if mask is None else mask.to(dtype=x.dtype, device=x.device)
    y = x * m
    if scaling == "inverted":
        y = y / q
    return (y, m) if return_mask else y


def _mask_for(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    # a generator lives on one device; draw there, then move
    if generator is not None and generator.device != x.device:
        return mask(x.shape, p, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    return mask(x.shape, p, generator=generator, device=x.device, dtype=x.dtype)


class Dropout(nn.Module):
    """Dropout from scratch; behaves like :class:`torch.nn.Dropout` with ``scaling="inverted"``.

    ``scaling`` picks the rule of :func:`dropout` (inverted, classic, none).
    In ``train()`` mode it samples a new mask every call; in ``eval()`` mode it
    applies the evaluation rule. Srivastava et al. 2014.
    """

    def __init__(self, p: float = 0.5, scaling: Scaling = "inverted", generator: torch.Generator | None = None):
        super().__init__()
        self.p = check_p(p)
        self.scaling = check_scaling(scaling)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.scaling, generator=self.generator)  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"p={self.p}, scaling={self.scaling!r}"


class SpatialDropout(nn.Module):
    """Spatial dropout: drop whole channels of an (N, C, ...) tensor (Tompson et al. 2015).

    One mask entry per (sample, channel), broadcast over the spatial
    positions; inverted scaling (divide by ``q`` during training), like
    :class:`torch.nn.Dropout2d`.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        self.p = check_p(p)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.dim() < 3:
            raise ValueError(f"SpatialDropout expects (N, C, ...) with spatial dims; got shape {tuple(x.shape)}")
        shape = tuple(x.shape[:2]) + (1,) * (x.dim() - 2)
        dev = self.generator.device if self.generator is not None else x.device
        m = mask(shape, self.p, generator=self.generator, device=dev, dtype=x.dtype).to(x.device)
        return x * m / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class UniformDropout(nn.Module):
    """Li et al.'s (CVPR 2019) uniform-noise variant of dropout ("Uout"), in the form used by the book (chapter 2).

    Training: ``x * (1 + r)`` with ``r ~ U(-beta, beta)`` drawn independently
    for every element; evaluation: ``x``. The mean is kept (``E[r] = 0``) and
    the multiplicative noise has variance ``beta**2 / 3`` (dropout's is
    ``p / q``), so the training variance is :func:`uniform_dropout_variance`.
    ``beta`` must lie in [0, 1] so that ``1 + r`` never changes the sign.
    """

    def __init__(self, beta: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"beta is the half-width of the uniform noise r ~ U(-beta, beta) and must lie in [0, 1]; got {beta!r}")
        self.beta = float(beta)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.beta == 0:
            return x
        dev = self.generator.device if self.generator is not None else x.device
        u = torch.rand(x.shape, generator=self.generator, device=dev, dtype=x.dtype).to(x.device)
        return x * (1.0 + self.beta * (2.0 * u - 1.0))

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def drop_path(p: float) -> nn.Module:
    """DropPath (stochastic depth, Huang et al. 2016; chapter 6): in train mode each *sample* is
    dropped whole with probability ``p`` or kept and scaled by ``1/q``; in eval mode the identity.
    At the end of a residual branch (``dropout_at="P7path"``) it is P7 with one mask entry per sample.
    torchvision's ``StochasticDepth(p, mode="row")``, imported on first use (droplab imports light)."""
    from torchvision.ops import StochasticDepth
    return StochasticDepth(float(check_p(p)), mode="row")


def matched_beta(p: float) -> float:
    """The ``beta`` whose uniform noise has the variance of dropout's: ``beta**2 / 3 = p / q``.

    Only defined up to ``p = 0.25`` (``beta = 1``); larger ``p`` raises a ValueError.
    """
    check_p(p)
    beta = (3.0 * p / (1.0 - p)) ** 0.5
    if beta > 1.0:
        raise ValueError(f"dropout with p={p} has noise variance p/q={p / (1 - p):.3g}; uniform noise "
                         f"U(-beta, beta) with beta <= 1 reaches at most 1/3 (p = 0.25)")
    return beta


# --------------------------------------------------------------------------- Eq. 6


def expected_output_variance(var_x, mean_x, p):  # float, array or tensor
    """Train-mode variance of inverted dropout's output, Kim et al. Eq. 6 with ``q = 1 - p``:

        Var[Dropout_train(x)] = Var[x] / q + (1 - q) / q * E[x]**2

    At evaluation the variance is ``Var[x]``. Works on floats, arrays and tensors.
    """
    check_p(p)
    q = 1.0 - p
    return var_x / q + (1.0 - q) / q * mean_x**2


def uniform_dropout_variance(var_x, mean_x, beta):  # float, array or tensor
    """Train-mode variance of :class:`UniformDropout`'s output:

        Var[x (1 + r)] = Var[x] + beta**2 / 3 * (Var[x] + E[x]**2)

    the same form as dropout's Eq. 6 of Kim et al. written as
    ``Var[x] + (p / q) (Var[x] + E[x]**2)``: only the noise variance differs.
    """
    return var_x + beta**2 / 3.0 * (var_x + mean_x**2)


# --------------------------------------------------------------------------- which layers are dropout


DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    Dropout,
    SpatialDropout,
    UniformDropout,
)


def is_dropout(module: nn.Module) -> bool:
    """True for PyTorch's dropout layers, :class:`Dropout`, :class:`SpatialDropout`, :class:`UniformDropout`
    and DropPath (:func:`drop_path`): the one test of "is this a dropout layer?" in droplab."""
    ops = sys.modules.get("torchvision.ops")          # no StochasticDepth exists before it is loaded
    return isinstance(module, DROPOUT_TYPES) or (ops is not None and isinstance(module, ops.StochasticDepth))


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """All dropout layers inside ``model`` (including ``model`` itself)."""
    return [m for m in model.modules() if is_dropout(m)]


def enable_dropout(model: nn.Module) -> list[nn.Module]:
    """Switch ONLY the dropout layers of ``model`` to train mode; return them.

    Everything else keeps its mode. Calling ``model.train()`` for MC dropout
    is the BN trap: batch normalization would switch to batch statistics too.
    """
    layers = dropout_modules(model)
    for m in layers:
        m.train()
    return layers


def set_dropout(model: nn.Module, active: bool) -> None:
    """Put only the dropout layers of ``model`` in train (``active``) or eval mode."""
    for m in dropout_modules(model):
        m.train(active)


# --------------------------------------------------------------------------- leaving a model as it was


@contextlib.contextmanager
def keep_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: restore the train/eval mode of every submodule on exit."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def saved_buffers(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: restore every buffer of ``model`` (BN running statistics and counts) on exit."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def mask_seed(seed: int) -> int:
    """The seed of the dropout-mask stream derived from ``seed``.

    Masks must not come from the same stream as the data: ``torch.manual_seed(0)``
    before drawing the inputs and again before drawing the masks makes the
    masks correlated with the inputs (a real pitfall: Delta of dropout alone
    came out 0.59 instead of 0.44). Mixing the seed avoids it.
    """
    return (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (2**63)


@contextlib.contextmanager
def seeded_masks(seed: int | None, device: torch.device | str | None = None) -> Iterator[None]:
    """Context manager: inside, the global generator (of the CPU, and of ``device`` if it is a
    GPU) is seeded with :func:`mask_seed` of ``seed``; on exit its state is what it was.

    The one way droplab draws reproducible dropout masks without touching the
    caller's random state. ``seed=None`` does nothing: masks come from the
    global generator as it is.
    """
    if seed is None:
        yield
        return
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(mask_seed(seed))
        yield


# --------------------------------------------------------------------------- MC dropout


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager for MC dropout (Gal & Ghahramani 2016).

    Inside: the model is in eval mode (BN uses its running statistics) except
    for the dropout layers, which sample masks. On exit every submodule is
    back in the mode it had.
    """
    with keep_modes(model):
        model.eval()
        enable_dropout(model)
        yield model


@contextlib.contextmanager
def _all_in_train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.train()`` (the BN trap), with modes and buffers given back on exit."""
    with keep_modes(model), saved_buffers(model):
        model.train()
        yield model


BNStatistics = Literal["running", "batch"]


def mc_samples(
    model: nn.Module,
    x: torch.Tensor,
    T: int,
    *,
    batch_size: int | None = None,
    seed: int | None = None,
    softmax: bool = True,
    bn: BNStatistics = "running",
) -> torch.Tensor:
    """``T`` stochastic forward passes of ``model`` on ``x`` with dropout sampling masks, shape (T, N, K).

    The one MC loop of droplab (Gal & Ghahramani 2016). ``softmax`` returns
    probabilities, else the raw outputs (logits). ``bn="running"`` is MC
    dropout done right (:func:`mc_dropout`: only the dropout layers in train
    mode); ``bn="batch"`` is the BN trap, every module in train mode, so BN
    normalizes each chunk with its own statistics (the modes and buffers are
    given back afterwards). ``batch_size`` splits ``x`` into chunks to bound
    memory; ``seed`` makes the masks repeat (:func:`seeded_masks`) without
    touching the global random state. No gradients.
    """
    if T < 1:
        raise ValueError(f"T (number of MC samples) must be >= 1; got {T}")
    if bn not in ("running", "batch"):
        raise ValueError(f"bn must be 'running' (MC dropout) or 'batch' (every module in train mode); got {bn!r}")
    dev = next((t.device for t in model.parameters()), x.device)
    x = x.to(dev)
    chunks = [x] if batch_size is None else list(torch.split(x, batch_size))
    modes = mc_dropout(model) if bn == "running" else _all_in_train_mode(model)
    with seeded_masks(seed, dev), modes, torch.no_grad():
        out = [torch.cat([F.softmax(model(c), dim=-1) if softmax else model(c) for c in chunks]) for _ in range(T)]
    return torch.stack(out)


def mc_predict(model: nn.Module, x: torch.Tensor, T: int, batch_size: int | None = None,
               seed: int | None = None) -> torch.Tensor:
    """``T`` stochastic forward passes with dropout on (Gal & Ghahramani 2016): softmax
    probabilities of shape (T, N, K). :func:`mc_samples` with its defaults."""
    return mc_samples(model, x, T, batch_size=batch_size, seed=seed)


def mc_outputs(model: nn.Module, x: torch.Tensor, T: int, seed: int | None = None) -> torch.Tensor:
    """``T`` raw outputs (logits) of ``model`` on ``x`` with only its dropout layers on, shape (T, N, K).

    Like :func:`mc_predict` without the softmax: the MC average of the logits
    is what weight scaling approximates (Srivastava et al. 2014, Section 7.5).
    """
    return mc_samples(model, x, T, seed=seed, softmax=False)


def mc_predict_train_mode(model: nn.Module, x: torch.Tensor, T: int, batch_size: int | None = None,
                          seed: int | None = None) -> torch.Tensor:
    """The BN trap, for demonstration: MC dropout done with ``model.train()`` (chapter 1).

    Same output as :func:`mc_predict` (softmax probabilities, (T, N, K)), but
    every module is in train mode, so batch normalization normalizes each
    chunk of ``batch_size`` inputs with that chunk's own statistics (the
    prediction for one image depends on its batch companions) and updates its
    running statistics as a side effect. The running statistics and modes are
    restored afterwards, so the demonstration leaves the model as it was; real
    code that calls ``model.train()`` does not. Use :func:`mc_predict`.
    """
    return mc_samples(model, x, T, batch_size=batch_size, seed=seed, bn="batch")


def predictive_entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy ``-sum_k p_k log p_k`` (nats) of predictive probabilities, e.g. ``mc_predict(...).mean(0)``."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim)


def mutual_information(probs: torch.Tensor) -> torch.Tensor:
    """BALD mutual information from MC samples of shape (T, N, K), in nats.

    ``H[mean_t p_t] - mean_t H[p_t]``: the part of the predictive entropy due
    to disagreement between dropout masks (model uncertainty).
    """
    if probs.dim() != 3:
        raise ValueError(f"expected MC probabilities of shape (T, N, K); got {tuple(probs.shape)}")
    return predictive_entropy(probs.mean(0)) - predictive_entropy(probs).mean(0)
