"""The inconsistency ratio and the analytic formulas of Kim et al. (UAI 2023) (chapters 2-4).

Notation. The library follows PyTorch: ``p`` is the probability of
**dropping** a unit; ``q = 1 - p`` is the keep probability, which Kim et al.
call *p*. Every formula below is the paper's, rewritten with ``q``.

Inconsistency ratio (Kim et al., Definition 2, Eq. 3)::

    Delta(f) = Var[f_test(x)] / Var[f_train(x)]

where "test" switches only the dropout layers off (BN and everything else stay
in the mode they are in); the variance is over the mini-batch, per feature,
and averaged over features. Delta < 1 means the output varies more in training
than at test time, which misleads the next batch normalization.

Here: :func:`batch_variance` and :func:`inconsistency_ratio` (the measurement),
and the formulas of Eqs. 6-35 (Eq. 6 itself is
:func:`droplab.dropout.expected_output_variance`). The module tests that
measure them on small networks are :mod:`droplab.inconsistency`; the shift inside a
trained network is :func:`droplab.probes.bn_variance_shift`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from droplab.dropout import (
    check_p,
    expected_output_variance,
    keep_modes,
    saved_buffers,
    seeded_masks,
    set_dropout,
    uniform_dropout_variance,
)

#: What a variance is taken over: every entry of a sample is a feature, or every channel is
#: (pooling the batch and all positions, as BatchNorm2d does).
Pooling = Literal["feature", "channel"]


# =========================================================================== measuring Delta


def batch_variance(y: torch.Tensor, per: Pooling = "feature") -> torch.Tensor:
    """Variance over the mini-batch of every feature, in float64.

    ``per="feature"``: each entry of ``y[i]`` is a feature (for (N, C, H, W),
    every channel-position pair); the variance is over dim 0.
    ``per="channel"``: for (N, C, ...) each channel is a feature and the
    variance is over the batch and all positions (what BatchNorm2d sees).
    """
    y = y.detach()
    if y.device.type == "mps":  # MPS has no float64
        y = y.cpu()
    y = y.to(torch.float64)
    if per == "feature":
        flat = y.reshape(y.shape[0], -1)
    elif per == "channel":
        if y.dim() < 2:
            raise ValueError(f"per='channel' needs (N, C, ...); got shape {tuple(y.shape)}")
        flat = y.movedim(1, -1).reshape(-1, y.shape[1])
    else:
        raise ValueError(f"per must be 'feature' or 'channel'; got {per!r}")
    return flat.var(dim=0, unbiased=False)


def inconsistency_ratio(
    module: nn.Module,
    x: torch.Tensor,
    *,
    per: Pooling = "feature",
    seed: int | None = 0,
    return_variances: bool = False,
) -> float | tuple[float, float, float]:
    """Measure Delta(module(x)) = Var[f_test(x)] / Var[f_train(x)] (Kim et al. Definition 2, Eq. 3).

    Runs ``module`` twice without gradients: once with only its dropout layers
    in train mode (f_train), once with only them in eval mode (f_test); every
    other submodule (BN included) stays in the mode it is in. Variances are
    over the batch, per feature (see :func:`batch_variance`), averaged over
    features, and Delta is the ratio of the two averages.

    ``module`` may be a bare dropout layer (Delta of dropout alone, compare
    :func:`dropout_ratio`). Modes and buffers (BN running statistics) are
    restored afterwards. ``seed`` fixes the dropout masks (drawn from a stream
    derived from it, see :func:`~droplab.dropout.seeded_masks`) without touching the global random
    state; None draws from the global generator as it is. With ``return_variances``
    returns ``(Delta, var_test, var_train)``.
    """
    with saved_buffers(module), keep_modes(module), torch.no_grad(), seeded_masks(seed, x.device):
        set_dropout(module, True)
        v_train = batch_variance(module(x), per).mean().item()
        set_dropout(module, False)
        v_test = batch_variance(module(x), per).mean().item()
    ratio = v_test / v_train
    return (ratio, v_test, v_train) if return_variances else ratio


# =========================================================================== analytic formulas


def dropout_ratio(var_x, mean_x, p):
    """Delta of dropout alone: Var[x] / (Var[x]/q + (1-q)/q E[x]^2) (Kim et al. Eqs. 3 and 6); < 1 for p > 0."""
    return var_x / expected_output_variance(var_x, mean_x, p)


def norm_output_ratio(norm, var_x, mean_x, p):
    """Delta at the output of a normalization right after dropout (chapter 6): a BN normalizes
    at inference with the running statistics of training, so its output keeps the input's
    Delta (:func:`dropout_ratio`); GroupNorm and LayerNorm (``norm`` "group", "layer")
    normalize each sample with its own statistics, so their output's variance is 1 in
    both modes and Delta is 1 whatever ``p``."""
    if norm == "batch":
        return dropout_ratio(var_x, mean_x, p)
    if norm not in ("group", "layer"):
        raise ValueError(f"unknown norm {norm!r}; valid norms are batch, group, layer")
    return 1.0 + 0.0 * p


def relu_gaussian_mean(gamma=1.0):
    """E[ReLU(z)] = gamma / sqrt(2 pi) for z ~ N(0, gamma^2) (Kim et al. Eq. 12)."""
    return gamma / math.sqrt(2 * math.pi)


def relu_gaussian_var(gamma=1.0):
    """Var[ReLU(z)] = (pi - 1) / (2 pi) gamma^2 for z ~ N(0, gamma^2) (Kim et al. Eq. 13)."""
    return (math.pi - 1) / (2 * math.pi) * gamma**2


def branch_variance_train(p, gamma=1.0):
    """Var of the residual branch with dropout at P6 and He-init last weight, training:
    (pi/q - 1)/pi gamma^2 (Kim et al. Eqs. 15, 17, 18)."""
    check_p(p)
    return (math.pi / (1.0 - p) - 1) / math.pi * gamma**2


def branch_variance_test(gamma=1.0):
    """Var of the same branch at test time: (pi - 1)/pi gamma^2 (Kim et al. Eq. 19)."""
    return (math.pi - 1) / math.pi * gamma**2


def ratio_nonresidual(p):
    """Delta(f(x)) of a non-residual block with dropout at P5/P6: (pi - 1)/(pi/q - 1)
    (Kim et al. Proposition 3, Eqs. 21 and 29). Independent of gamma and of depth."""
    check_p(p)
    return (math.pi - 1) / (math.pi / (1.0 - p) - 1)


def ratio_residual(p, var_x0, gamma=1.0):
    """Delta(x0 + f(x0)) of the first residual block, dropout at P5/P6 (Kim et al. Proposition 3, Eqs. 22-23):

        (Var[x0] + (pi-1)/pi gamma^2) / (Var[x0] + (pi/q-1)/pi gamma^2)

    Lies between :func:`ratio_nonresidual` (Var[x0] = 0) and 1 (Var[x0] -> inf).
    """
    return ratio_residual_depth(p, var_x0, 1, gamma)


def ratio_residual_depth(p, var_x0, depth, gamma=1.0):
    """Delta(x_l) at the output of the ``depth``-th stacked residual block (dropout at P5/P6).

    Branch variances add up along depth (Kim et al. Eq. 25), so after
    ``depth = l + 1`` blocks (Eqs. 26, 27, 31)::

        (Var[x0] + (pi-1)/pi S) / (Var[x0] + (pi/q-1)/pi S),   S = sum of gamma_i^2

    ``gamma`` is one value for every block or a sequence of ``depth`` values.
    The ratio falls towards :func:`ratio_nonresidual` as depth grows but stays
    above it (Proposition 4, Eqs. 32-33).
    """
    check_p(p)
    if isinstance(gamma, (Sequence, np.ndarray)) and not isinstance(gamma, str):
        g = np.asarray(gamma, dtype=float)
        if len(g) != depth:
            raise ValueError(f"gamma has {len(g)} values but depth is {depth}; give one per block or a single number")
        s = float(np.sum(g**2))
    else:
        s = depth * gamma**2
    q = 1.0 - p
    return (var_x0 + (math.pi - 1) / math.pi * s) / (var_x0 + (math.pi / q - 1) / math.pi * s)


def variance_at_h4(mu, sigma2, p, S):
    """Var[GAP(Dropout_train(x))] (head position H4) for S i.i.d. positions with mean mu, variance sigma2:

        sigma2/(q S) + (1-q) mu^2/(q S)

    Each element has the Eq. 6 variance; the mean of S independent ones
    divides it by S (Kim et al. Proposition 5, Eq. 34).
    """
    check_p(p)
    q = 1.0 - p
    return sigma2 / (q * S) + (1 - q) * mu**2 / (q * S)


def variance_at_h5(mu, sigma2, p, S):
    """Var[Dropout_train(GAP(x))] (head position H5) for the same features:

        sigma2/(q S) + (1-q) mu^2/q

    GAP(x) has mean mu and variance sigma2/S; Eq. 6 applied to it gives
    E[GAP^2]/q - mu^2. The mu^2 term is not divided by S, so H5 varies more
    than H4 whenever p > 0 and mu != 0 (Kim et al. Proposition 5, Eq. 35).
    """
    check_p(p)
    q = 1.0 - p
    return sigma2 / (q * S) + (1 - q) * mu**2 / q


def uniform_dropout_ratio(var_x, mean_x, beta):
    """Delta of Li et al.'s uniform noise ``x (1 + r)``, ``r ~ U(-beta, beta)``, alone:

        Var[x] / (Var[x] + beta**2/3 (Var[x] + E[x]**2))

    Compare :func:`dropout_ratio`, which is the same with ``beta**2/3`` replaced
    by dropout's noise variance ``p/q``: Delta depends on the noise only through its variance.
    """
    return var_x / uniform_dropout_variance(var_x, mean_x, beta)


def noise_matched_p(p_other, ratio):
    """The drop probability at which dropout here adds as much noise as dropout at
    ``p_other`` somewhere else, where, at equal p, the other place adds ``ratio`` times
    the noise of this one. Dropout's noise variance is proportional to ``p / q``
    (Eq. 6), so the answer solves ``p/(1-p) = ratio * p_other/(1-p_other)``
    (chapter 4: H4 against H5; chapter 5: a feature map against an FC input)."""
    k = ratio * p_other / (1 - p_other)
    return k / (1 + k)
