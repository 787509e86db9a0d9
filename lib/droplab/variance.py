"""The inconsistency ratio, the analytic formulas of Kim et al. (UAI 2023), and
the module tests behind their Propositions 2-5 (chapters 2-4).

Notation. The library follows PyTorch: ``p`` is the probability of
**dropping** a unit; ``q = 1 - p`` is the keep probability, which Kim et al.
call *p*. Every formula below is the paper's, rewritten with ``q``.

Inconsistency ratio (Kim et al., Definition 2, Eq. 3)::

    Delta(f) = Var[f_test(x)] / Var[f_train(x)]

where "test" switches only the dropout layers off (BN and everything else stay
in the mode they are in); the variance is over the mini-batch, per feature,
and averaged over features. Delta < 1 means the output varies more in training
than at test time, which misleads the next batch normalization.

The module tests follow the paper's protocol: inputs from N(0, var), weights
N(mean, 2/n) (He initialization when the mean is 0), BN in training mode, a
large batch (1e5 in the paper; ``droplab.scale`` picks the size here).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from droplab import scale
from droplab.dropout import Dropout, check_p, expected_output_variance, keep_modes, mask_seed, set_dropout

Per = Literal["feature", "channel"]
POSITIONS: tuple[str, ...] = ("P0", "P1", "P2", "P3", "P4", "P5", "P6", "P7")
PI = math.pi


def default_batch() -> int:
    """Mini-batch size of the module tests for the scale in force (the paper uses 1e5)."""
    return scale.pick(smoke=20_000, class_=50_000, paper=100_000)


# =========================================================================== measuring Delta


def batch_variance(y: torch.Tensor, per: Per = "feature") -> torch.Tensor:
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


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Draw from the global generator seeded with :func:`mask_seed`, then restore its state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(mask_seed(seed))
        yield


def inconsistency_ratio(
    module: nn.Module,
    x: torch.Tensor,
    *,
    per: Per = "feature",
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
    derived from it, see :func:`mask_seed`) without touching the global random
    state; None draws from the global generator as it is. With ``return_variances``
    returns ``(Delta, var_test, var_train)``.
    """
    dev = x.device
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        with keep_modes(module), torch.no_grad(), _seeded(seed, dev):
            set_dropout(module, True)
            v_train = batch_variance(module(x), per).mean().item()
            set_dropout(module, False)
            v_test = batch_variance(module(x), per).mean().item()
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    ratio = v_test / v_train
    return (ratio, v_test, v_train) if return_variances else ratio


# =========================================================================== analytic formulas


def dropout_variance(var_x, mean_x, p):  # noqa: ANN001,ANN201
    """Var[Dropout_train(x)] = Var[x]/q + (1-q)/q E[x]^2 (Kim et al. Eq. 6, q = 1 - p)."""
    return expected_output_variance(var_x, mean_x, p)


def dropout_ratio(var_x, mean_x, p):  # noqa: ANN001,ANN201
    """Delta of dropout alone: Var[x] / (Var[x]/q + (1-q)/q E[x]^2) (Kim et al. Eqs. 3 and 6); < 1 for p > 0."""
    return var_x / dropout_variance(var_x, mean_x, p)


def relu_gaussian_mean(gamma=1.0):  # noqa: ANN001,ANN201
    """E[ReLU(z)] = gamma / sqrt(2 pi) for z ~ N(0, gamma^2) (Kim et al. Eq. 12)."""
    return gamma / math.sqrt(2 * PI)


def relu_gaussian_var(gamma=1.0):  # noqa: ANN001,ANN201
    """Var[ReLU(z)] = (pi - 1) / (2 pi) gamma^2 for z ~ N(0, gamma^2) (Kim et al. Eq. 13)."""
    return (PI - 1) / (2 * PI) * gamma**2


def branch_variance_train(p, gamma=1.0):  # noqa: ANN001,ANN201
    """Var of the residual branch with dropout at P6 and He-init last weight, training:
    (pi/q - 1)/pi gamma^2 (Kim et al. Eqs. 15, 17, 18)."""
    check_p(p)
    return (PI / (1.0 - p) - 1) / PI * gamma**2


def branch_variance_test(gamma=1.0):  # noqa: ANN001,ANN201
    """Var of the same branch at test time: (pi - 1)/pi gamma^2 (Kim et al. Eq. 19)."""
    return (PI - 1) / PI * gamma**2


def ratio_nonresidual(p):  # noqa: ANN001,ANN201
    """Delta(f(x)) of a non-residual block with dropout at P5/P6: (pi - 1)/(pi/q - 1)
    (Kim et al. Proposition 3, Eqs. 21 and 29). Independent of gamma and of depth."""
    check_p(p)
    return (PI - 1) / (PI / (1.0 - p) - 1)


def ratio_residual(p, var_x0, gamma=1.0):  # noqa: ANN001,ANN201
    """Delta(x0 + f(x0)) of the first residual block, dropout at P5/P6 (Kim et al. Proposition 3, Eqs. 22-23):

        (Var[x0] + (pi-1)/pi gamma^2) / (Var[x0] + (pi/q-1)/pi gamma^2)

    Lies between :func:`ratio_nonresidual` (Var[x0] = 0) and 1 (Var[x0] -> inf).
    """
    return ratio_residual_depth(p, var_x0, 1, gamma)


def ratio_residual_depth(p, var_x0, depth, gamma=1.0):  # noqa: ANN001,ANN201
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
    return (var_x0 + (PI - 1) / PI * s) / (var_x0 + (PI / q - 1) / PI * s)


def gap_dropout_variance(mu, sigma2, p, S):  # noqa: ANN001,ANN201
    """Var[GAP(Dropout_train(x))] (head position H4) for S i.i.d. positions with mean mu, variance sigma2:

        sigma2/(q S) + (1-q) mu^2/(q S)

    Each element has the Eq. 6 variance; the mean of S independent ones
    divides it by S (Kim et al. Proposition 5, Eq. 34).
    """
    check_p(p)
    q = 1.0 - p
    return sigma2 / (q * S) + (1 - q) * mu**2 / (q * S)


def dropout_gap_variance(mu, sigma2, p, S):  # noqa: ANN001,ANN201
    """Var[Dropout_train(GAP(x))] (head position H5) for the same features:

        sigma2/(q S) + (1-q) mu^2/q

    GAP(x) has mean mu and variance sigma2/S; Eq. 6 applied to it gives
    E[GAP^2]/q - mu^2. The mu^2 term is not divided by S, so H5 varies more
    than H4 whenever p > 0 and mu != 0 (Kim et al. Proposition 5, Eq. 35).
    """
    check_p(p)
    q = 1.0 - p
    return sigma2 / (q * S) + (1 - q) * mu**2 / q


# =========================================================================== building blocks


def he_linear(
    n_in: int,
    n_out: int | None = None,
    mean: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> nn.Linear:
    """A bias-free linear layer with weights i.i.d. N(mean, 2/n_in) (He et al. 2015 when mean = 0)."""
    n_out = n_in if n_out is None else n_out
    layer = nn.Linear(n_in, n_out, bias=False, dtype=dtype)
    with torch.no_grad():
        w = torch.randn(n_out, n_in, generator=generator, dtype=dtype) * math.sqrt(2.0 / n_in) + mean
        layer.weight.copy_(w)
    return layer


class ResidualBlock(nn.Module):
    """``h = pre(x); return h + branch(h)``: a residual block around an ``nn.Sequential`` branch.

    ``pre`` is a dropout on the block input for position P0 (it drops the
    shortcut too), else the identity.
    """

    def __init__(self, branch: nn.Module, pre: nn.Module | None = None):
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        return h + self.branch(h)


def mlp_branch(
    width: int,
    dropout_at: str | None = "P6",
    p: float = 0.5,
    mean_w: float = 0.0,
    gamma: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> nn.Sequential:
    """The fully connected analogue of the PreResNet branch, in execution order::

        [P1] BN1 [P2] ReLU [P3] W1 [P4] BN2 [P5] ReLU [P6] W2 [P7]

    with one :class:`~droplab.dropout.Dropout` at ``dropout_at`` (P1-P7;
    ``None`` or ``"P0"`` puts none in the branch). Weights N(mean_w, 2/n),
    BN2's scale set to ``gamma`` (the gamma_l of Kim et al. Eqs. 12-19).
    """
    check_p(p)
    bn2 = nn.BatchNorm1d(width, dtype=dtype)
    with torch.no_grad():
        bn2.weight.fill_(gamma)
    layers: list[nn.Module] = [
        nn.BatchNorm1d(width, dtype=dtype),
        nn.ReLU(),
        he_linear(width, mean=mean_w, generator=generator, dtype=dtype),
        bn2,
        nn.ReLU(),
        he_linear(width, mean=mean_w, generator=generator, dtype=dtype),
    ]
    if dropout_at not in (None, "P0"):
        if dropout_at not in POSITIONS:
            raise ValueError(f"dropout_at must be one of {', '.join(POSITIONS)} or None; got {dropout_at!r}")
        layers.insert(int(dropout_at[1]) - 1, Dropout(p))
    return nn.Sequential(*layers)


def mlp_block(
    width: int,
    dropout_at: str | None = "P6",
    p: float = 0.5,
    residual: bool = True,
    mean_w: float = 0.0,
    gamma: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> nn.Module:
    """A fully connected PreResNet block (``residual``) or its branch alone, dropout at ``dropout_at``.

    P0 puts dropout on the block input, before the split into shortcut and
    branch (for a non-residual block it is then dropout before BN1).
    """
    branch = mlp_branch(width, dropout_at, p, mean_w, gamma, generator, dtype)
    if dropout_at == "P0":
        if residual:
            return ResidualBlock(branch, pre=Dropout(p))
        return nn.Sequential(Dropout(p), *branch)
    return ResidualBlock(branch) if residual else branch


# =========================================================================== module tests


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def prop2_pipeline(
    width: int,
    mean_w: float,
    p: float = 0.5,
    batch: int | None = None,
    position: Literal["pre", "post"] = "pre",
    seed: int = 0,
) -> float:
    """Delta of PreDropout ``W Dropout(x)`` or PostDropout ``Dropout(W x)`` (Kim et al. Proposition 2, Eq. 11).

    ``x`` is the output of the [BN-ReLU-W-BN-ReLU] pipeline on inputs from
    N(0, 1); every weight is i.i.d. N(mean_w, 2/width); BN is in training
    mode. The same ``seed`` gives the same weights, inputs and masks for both
    positions. The paper (Figure 1, width 128-2048, keep 0.5, batch 1e5)
    finds Delta(post) < Delta(pre) < 1 for E[W] != 0, equal at E[W] = 0.
    """
    if position not in ("pre", "post"):
        raise ValueError(f"position must be 'pre' (W Dropout(x)) or 'post' (Dropout(W x)); got {position!r}")
    check_p(p)
    batch = batch or default_batch()
    g = _gen(seed)
    dt = torch.float64
    pipeline = [
        nn.BatchNorm1d(width, dtype=dt),
        nn.ReLU(),
        he_linear(width, mean=mean_w, generator=g, dtype=dt),
        nn.BatchNorm1d(width, dtype=dt),
        nn.ReLU(),
    ]
    w = he_linear(width, mean=mean_w, generator=g, dtype=dt)
    tail = [Dropout(p), w] if position == "pre" else [w, Dropout(p)]
    model = nn.Sequential(*pipeline, *tail).train()
    x = torch.randn(batch, width, generator=g, dtype=dt)
    return inconsistency_ratio(model, x, seed=seed)  # type: ignore[return-value]


def prop3_block(
    var_x0: float,
    p: float,
    width: int = 128,
    batch: int | None = None,
    seed: int = 0,
    residual: bool = True,
    gamma: float = 1.0,
) -> float:
    """Measured Delta of f(x0) (non-residual) or x0 + f(x0) (residual), dropout at P6 (Kim et al. Proposition 3).

    The branch is [BN-ReLU-W-BN-ReLU-Dropout-W] with He-init weights, BN in
    training mode, input x0 ~ N(0, var_x0). Compare with
    :func:`ratio_nonresidual` and :func:`ratio_residual`.
    """
    check_p(p)
    batch = batch or default_batch()
    g = _gen(seed)
    block = mlp_block(width, "P6", p, residual=residual, gamma=gamma, generator=g).train()
    x0 = torch.randn(batch, width, generator=g, dtype=torch.float64) * math.sqrt(var_x0)
    return inconsistency_ratio(block, x0, seed=seed)  # type: ignore[return-value]


def stacked_blocks(
    depth: int,
    position: str = "P6",
    p: float = 0.5,
    width: int = 128,
    batch: int | None = None,
    seed: int = 0,
    var_x0: float = 1.0,
    bn: Literal["train", "running"] = "train",
    residual: bool = True,
) -> list[float]:
    """Delta at the output of each of ``depth`` stacked fully connected PreResNet blocks (Kim et al. Prop. 4).

    Each block is :func:`mlp_block` with dropout at ``position`` (P0-P7).
    Returns ``[Delta(x_1), ..., Delta(x_depth)]``; for P5/P6 compare with
    ``ratio_residual_depth(p, var_x0, l)`` (Eqs. 26, 27, 31).

    ``bn="train"`` is the paper's module test: BN normalizes with batch
    statistics in both passes, so a dropout placed before a BN (P1-P4) is
    renormalized away and looks harmless. ``bn="running"`` is deployment:
    the training pass (dropout on) records BN's running statistics and the
    test pass runs everything in eval mode with them, so the variance shift
    at the next BN input shows up downstream.
    """
    if bn not in ("train", "running"):
        raise ValueError(f"bn must be 'train' (batch statistics in both passes) or 'running'; got {bn!r}")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}; got {position!r}")
    check_p(p)
    batch = batch or default_batch()
    g = _gen(seed)
    blocks = nn.ModuleList(mlp_block(width, position, p, residual=residual, generator=g) for _ in range(depth))
    x0 = torch.randn(batch, width, generator=g, dtype=torch.float64) * math.sqrt(var_x0)
    for m in blocks.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, the batch statistics

    def run() -> list[float]:
        h, out = x0, []
        for b in blocks:
            h = b(h)
            out.append(batch_variance(h).mean().item())
        return out

    with torch.no_grad(), _seeded(seed, x0.device):
        blocks.train()
        v_train = run()
        if bn == "running":
            blocks.eval()
        set_dropout(blocks, False)
        v_test = run()
    return [vt / vr for vt, vr in zip(v_test, v_train)]


def gap_variance_experiment(
    S: int,
    mu: float,
    sigma2: float,
    p: float,
    n: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Measure Var[GAP(Dropout(x))] (H4) and Var[Dropout(GAP(x))] (H5) for i.i.d. features (Kim et al. Prop. 5).

    ``x`` has ``S`` spatial positions, i.i.d. N(mu, sigma2); ``n`` samples.
    Returns the measured variances (``"H4"``, ``"H5"``), the formulas
    (``"H4_formula"``, ``"H5_formula"``) and ``"no_dropout"`` (Var[GAP(x)],
    sigma2/S in theory).
    """
    check_p(p)
    n = n or scale.pick(smoke=50_000, class_=200_000, paper=1_000_000)
    g = _gen(seed)
    q = 1.0 - p
    dt = torch.float64
    x = torch.randn(n, S, generator=g, dtype=dt) * math.sqrt(sigma2) + mu
    m_elem = torch.bernoulli(torch.full((n, S), q, dtype=dt), generator=g)
    m_chan = torch.bernoulli(torch.full((n,), q, dtype=dt), generator=g)
    gap = x.mean(1)
    h4 = (x * m_elem / q).mean(1)
    h5 = gap * m_chan / q
    return {
        "H4": h4.var().item(),
        "H5": h5.var().item(),
        "no_dropout": gap.var().item(),
        "H4_formula": float(gap_dropout_variance(mu, sigma2, p, S)),
        "H5_formula": float(dropout_gap_variance(mu, sigma2, p, S)),
        "no_dropout_formula": sigma2 / S,
    }


def gap_variances_on(
    features: torch.Tensor,
    p: float,
    samples: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """H4 vs H5 on a real feature map (N, C, H, W), where positions are correlated.

    Draws ``samples`` dropout masks and returns, averaged over channels:

    - ``"H4_total"``, ``"H5_total"``: variance over batch and masks of
      GAP(Dropout(x)) and Dropout(GAP(x)) (what the FC layer sees in training);
    - ``"no_dropout"``: variance over the batch of GAP(x);
    - ``"H4_noise"``, ``"H5_noise"``: variance over masks for a fixed input,
      averaged over inputs (the noise dropout adds), and their exact
      expectations ``"H4_noise_formula"`` = (1-q)/q mean_s(x^2)/S and
      ``"H5_noise_formula"`` = (1-q)/q GAP(x)^2 (Eq. 6 applied per input).
    """
    check_p(p)
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W); got shape {tuple(features.shape)}")
    q = 1.0 - p
    x = features.detach().to(torch.float64).cpu()
    N, C, H, W = x.shape
    S = H * W
    g = _gen(seed)
    gap = x.mean((2, 3))  # (N, C)
    h4 = torch.empty(samples, N, C, dtype=torch.float64)
    h5 = torch.empty(samples, N, C, dtype=torch.float64)
    for t in range(samples):
        h4[t] = (x * torch.bernoulli(torch.full_like(x, q), generator=g) / q).mean((2, 3))
        h5[t] = gap * torch.bernoulli(torch.full_like(gap, q), generator=g) / q
    k = (1 - q) / q
    return {
        "H4_total": h4.reshape(-1, C).var(0).mean().item(),
        "H5_total": h5.reshape(-1, C).var(0).mean().item(),
        "no_dropout": gap.var(0).mean().item(),
        "H4_noise": h4.var(0).mean().item(),
        "H5_noise": h5.var(0).mean().item(),
        "H4_noise_formula": (k * (x**2).mean((2, 3)) / S).mean().item(),
        "H5_noise_formula": (k * gap**2).mean().item(),
    }


__all__ = [
    "POSITIONS",
    "default_batch",
    "batch_variance",
    "inconsistency_ratio",
    "dropout_variance",
    "dropout_ratio",
    "relu_gaussian_mean",
    "relu_gaussian_var",
    "branch_variance_train",
    "branch_variance_test",
    "ratio_nonresidual",
    "ratio_residual",
    "ratio_residual_depth",
    "gap_dropout_variance",
    "dropout_gap_variance",
    "he_linear",
    "ResidualBlock",
    "mlp_branch",
    "mlp_block",
    "prop2_pipeline",
    "prop3_block",
    "stacked_blocks",
    "gap_variance_experiment",
    "gap_variances_on",
]


# =========================================================================== chapter 2 support

import dataclasses  # noqa: E402  (kept with the chapter 2 additions)


def uniform_dropout_ratio(var_x, mean_x, beta):  # noqa: ANN001,ANN201
    """Delta of Li et al.'s uniform noise ``x (1 + r)``, ``r ~ U(-beta, beta)``, alone:

        Var[x] / (Var[x] + beta**2/3 (Var[x] + E[x]**2))

    Compare :func:`dropout_ratio`, which is the same with ``beta**2/3`` replaced
    by dropout's noise variance ``p/q``: Delta depends on the noise only through its variance.
    """
    from droplab.dropout import uniform_dropout_variance

    return var_x / uniform_dropout_variance(var_x, mean_x, beta)


@dataclasses.dataclass
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
    acc: dict[int, list] = {}  # id -> [n, mean (C,), M2 (C,)], in the order the layers are reached

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        h = inputs[0].detach()
        h = h.cpu() if h.device.type == "mps" else h
        flat = h.to(torch.float64).movedim(1, -1).reshape(-1, h.shape[1])
        n_b = flat.shape[0]
        mean_b = flat.mean(0)
        m2_b = ((flat - mean_b) ** 2).sum(0)
        if id(module) not in acc:
            acc[id(module)] = [n_b, mean_b, m2_b]
            return
        n_a, mean_a, m2_a = acc[id(module)]
        n = n_a + n_b
        delta = mean_b - mean_a
        acc[id(module)] = [n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n]  # Chan et al.

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
    for depth, (key, (n, mean, m2)) in enumerate(acc.items(), start=1):
        bn = modules[key]
        out.append(BNShift(
            name=names[key],
            depth=depth,
            input_mean=mean.cpu(),
            input_var=(m2 / n).cpu(),
            running_mean=bn.running_mean.detach().to(torch.float64).cpu(),
            running_var=bn.running_var.detach().to(torch.float64).cpu(),
        ))
    return out


__all__ += ["uniform_dropout_ratio", "BNShift", "bn_variance_shift"]


# =========================================================================== chapter 3 support

#: Which batch normalization first sees a dropout at each position of a PreResNet block
#: (Kim et al. Section 2.3): P0 and P1 feed BN1 of the same block, P2-P4 its BN2, and
#: P5-P7 the BN1 of the *next* block, whose input is this block's output x_{l+1}
#: (``"out"``), after the skip connection has added the shortcut.
NEXT_BN: dict[str, str] = {
    "P0": "BN1", "P1": "BN1", "P2": "BN2", "P3": "BN2", "P4": "BN2", "P5": "out", "P6": "out", "P7": "out",
}


def bn_input_ratios(
    depth: int,
    position: str = "P6",
    p: float = 0.5,
    width: int = 128,
    batch: int | None = None,
    seed: int = 0,
    var_x0: float = 1.0,
) -> dict[str, list[float]]:
    """Delta at the input of every BN of ``depth`` stacked fully connected PreResNet blocks (Kim et al. Section 2.3).

    The paper's module-test protocol: every BN normalizes with batch
    statistics in both passes; the dropout layers alone switch between the
    training pass (masks) and the test pass (identity). Returns a dict of
    lists, one value per block l = 1..depth:

    - ``"BN1"``: Delta of the input of block l's first BN,
    - ``"BN2"``: Delta of the input of block l's second BN,
    - ``"out"``: Delta of block l's output, which is the input of block l+1's BN1.

    :data:`NEXT_BN` says which one a dropout at each position reaches first.
    The blocks, inputs and masks are those of ``stacked_blocks(..., bn="train")``
    with the same arguments, so ``"out"`` equals its result; for P5/P6 it
    follows Eq. 31 (:func:`ratio_residual_depth`), for P2-P4 ``"BN2"`` is the
    non-residual ratio of Eq. 29 (:func:`ratio_nonresidual`).
    """
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}; got {position!r}")
    check_p(p)
    batch = batch or default_batch()
    g = _gen(seed)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from the global generator
        blocks = nn.ModuleList(mlp_block(width, position, p, residual=True, generator=g) for _ in range(depth))
    x0 = torch.randn(batch, width, generator=g, dtype=torch.float64) * math.sqrt(var_x0)
    seen: dict[tuple[bool, int, str], float] = {}
    phase = {"train": True}

    def hook_for(block: int, name: str):  # noqa: ANN202
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            seen[(phase["train"], block, name)] = batch_variance(inputs[0]).mean().item()
        return hook

    handles = []
    for i, b in enumerate(blocks):
        bns = [m for m in b.branch if isinstance(m, nn.BatchNorm1d)]
        handles += [bns[0].register_forward_hook(hook_for(i, "BN1")), bns[1].register_forward_hook(hook_for(i, "BN2"))]

    def run() -> None:
        h = x0
        for i, b in enumerate(blocks):
            h = b(h)
            seen[(phase["train"], i, "out")] = batch_variance(h).mean().item()

    try:
        with torch.no_grad(), _seeded(seed, x0.device):
            blocks.train()
            run()
            phase["train"] = False
            set_dropout(blocks, False)
            run()
    finally:
        for h in handles:
            h.remove()
    return {name: [seen[(False, i, name)] / seen[(True, i, name)] for i in range(depth)]
            for name in ("BN1", "BN2", "out")}


def shift_at_next_bn(
    depth: int,
    position: str = "P6",
    p: float = 0.5,
    width: int = 128,
    batch: int | None = None,
    seed: int = 0,
    var_x0: float = 1.0,
) -> list[float]:
    """Delta at the input of the first BN after the dropout of each of ``depth`` stacked blocks.

    ``bn_input_ratios(...)[NEXT_BN[position]]``: the variance shift that
    Kim et al. (Section 2.3, Propositions 3-4) compare between positions.
    For P2-P4 it stays at the non-residual ratio (pi-1)/(pi/q-1) at every
    depth; for P5-P7 the skip connection lifts it towards 1 (Eq. 31); for P0
    it compounds with depth, because the shortcut carries the dropped input.
    """
    return bn_input_ratios(depth, position, p, width, batch, seed, var_x0)[NEXT_BN[position]]


__all__ += ["NEXT_BN", "bn_input_ratios", "shift_at_next_bn"]
