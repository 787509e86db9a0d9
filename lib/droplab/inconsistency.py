"""The inconsistency ratio, measured: the paper's module tests on small fully connected blocks (chapters 2-4).

Each function builds small networks to Kim et al.'s (UAI 2023) protocol and
returns what their Propositions 2-5 predict, to set beside the formulas of
:mod:`droplab.variance`:

================================  ===============================================  =====================
function                          measures                                          formula
================================  ===============================================  =====================
:func:`pre_post_dropout_ratio`    Delta of ``W Dropout(x)`` / ``Dropout(W x)``       Prop. 2, Eq. 11
:func:`block_ratio`               Delta of one block, f(x0) or x0 + f(x0), at P6     Prop. 3, Eqs. 21-23
:func:`stacked_ratios`            Delta at every BN input of a stack of blocks       Prop. 4, Eqs. 26-31
:func:`shift_at_next_bn`          Delta at the first BN after each block's dropout   Section 2.3
:func:`head_variances_iid`        Var at H4 and H5 for i.i.d. features               Prop. 5, Eqs. 34-35
:func:`head_variances_on`         the same on a real feature map (N, C, H, W)        Eq. 6 per input
================================  ===============================================  =====================

The protocol: inputs from N(0, var), weights N(mean, 2/n) (He initialization
when the mean is 0), BN in training mode, a large batch (1e5 in the paper;
:func:`default_batch` picks the size for the scale in force). The blocks are
:func:`mlp_block` (below), the PreResNet layout of :mod:`droplab.blocks` filled
with linear layers; Delta is :func:`droplab.variance.inconsistency_ratio` and the
masks come from :func:`droplab.dropout.seeded_masks`. Delta at the input and output
of a BN, GroupNorm or LayerNorm right after dropout (chapter 6) is measured by the
probe behind it, :func:`droplab.probes.norm_after_dropout`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from droplab import blocks, scale
from droplab.blocks import DROP_PATH, POSITION_NAMES, check_position
from droplab.dropout import Dropout, check_p, seeded_masks, set_dropout
from droplab.variance import batch_variance, inconsistency_ratio, variance_at_h4, variance_at_h5

# --------------------------------------------------------------------------- the fully connected blocks

def he_linear(n_in: int, n_out: int | None = None, mean: float = 0.0, generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float64) -> nn.Linear:
    """A bias-free linear layer with weights i.i.d. N(mean, 2/n_in) (He et al. 2015 when mean = 0)."""
    n_out = n_in if n_out is None else n_out
    layer = nn.Linear(n_in, n_out, bias=False, dtype=dtype)
    with torch.no_grad():
        w = torch.randn(n_out, n_in, generator=generator, dtype=dtype) * math.sqrt(2.0 / n_in) + mean
        layer.weight.copy_(w)
    return layer


def mlp_branch(width: int, dropout_at: str | None = "P6", p: float = 0.5, mean_w: float = 0.0, gamma: float = 1.0,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The fully connected analogue of the PreResNet branch, in execution order (the layout
    "preresnet-basic" of :mod:`droplab.blocks`, linear layers for the convs)::

        [P1] BN1 [P2] ReLU [P3] W1 [P4] BN2 [P5] ReLU [P6] W2 [P7]

    with one :class:`~droplab.dropout.Dropout` at ``dropout_at`` (P1-P7, or
    DropPath at P7 for ``"P7path"``; ``None`` or ``"P0"`` puts none in the branch).
    Weights N(mean_w, 2/n), BN2's scale set to ``gamma`` (the gamma_l of Kim et al. Eqs. 12-19).
    """
    check_position(dropout_at, POSITION_NAMES + (DROP_PATH,), "a fully connected block")
    check_p(p)
    bn2 = nn.BatchNorm1d(width, dtype=dtype)
    with torch.no_grad():
        bn2.weight.fill_(gamma)
    return blocks.with_dropout(blocks.fill(
        "preresnet-basic", nn.BatchNorm1d(width, dtype=dtype), nn.ReLU(),
        he_linear(width, mean=mean_w, generator=generator, dtype=dtype), bn2, nn.ReLU(),
        he_linear(width, mean=mean_w, generator=generator, dtype=dtype),
    ), dropout_at, p, layer=Dropout)


def mlp_block(width: int, dropout_at: str | None = "P6", p: float = 0.5, residual: bool = True, mean_w: float = 0.0,
              gamma: float = 1.0, generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float64) -> nn.Module:
    """A fully connected PreResNet block (``residual``) or its branch alone, dropout at ``dropout_at``.

    P0 puts dropout on the block input, before the split into shortcut and
    branch (for a non-residual block it is then dropout before BN1).
    """
    branch = mlp_branch(width, dropout_at, p, mean_w, gamma, generator, dtype)
    if dropout_at == "P0":
        return blocks.ResidualBlock(branch, pre=Dropout(p)) if residual else nn.Sequential(Dropout(p), *branch)
    return blocks.ResidualBlock(branch) if residual else branch


def default_batch() -> int:
    """Mini-batch size of the module tests for the scale in force (the paper uses 1e5)."""
    return scale.pick(smoke=20_000, class_=50_000, paper=100_000)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- Propositions 2 and 3


def pre_post_dropout_ratio(
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


def block_ratio(
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
    :func:`~droplab.variance.ratio_nonresidual` and :func:`~droplab.variance.ratio_residual`.
    """
    check_p(p)
    batch = batch or default_batch()
    g = _gen(seed)
    block = mlp_block(width, "P6", p, residual=residual, gamma=gamma, generator=g).train()
    x0 = torch.randn(batch, width, generator=g, dtype=torch.float64) * math.sqrt(var_x0)
    return inconsistency_ratio(block, x0, seed=seed)  # type: ignore[return-value]


# --------------------------------------------------------------------------- Proposition 4: stacked blocks

#: Which batch normalization first sees a dropout at each position of a PreResNet block
#: (Kim et al. Section 2.3), derived from the block's layout (:func:`droplab.blocks.next_norm`):
#: P0 and P1 feed BN1 of the same block, P2-P4 its BN2, and P5-P7 (and DropPath) the BN1 of
#: the *next* block, whose input is this block's output x_{l+1} (``"out"``), after the skip
#: connection has added the shortcut.
NEXT_BN: dict[str, str] = {p: blocks.next_norm("preresnet-basic", p) for p in POSITION_NAMES + (DROP_PATH,)}


def stacked_ratios(
    depth: int,
    position: str = "P6",
    p: float = 0.5,
    width: int = 128,
    batch: int | None = None,
    seed: int = 0,
    var_x0: float = 1.0,
    bn: Literal["train", "running"] = "train",
    residual: bool = True,
) -> dict[str, list[float]]:
    """Delta at the input of every BN of ``depth`` stacked fully connected PreResNet blocks
    (Kim et al. Proposition 4 and Section 2.3).

    Each block is :func:`mlp_block` with dropout at ``position``
    (P0-P7, or ``"P7path"``: DropPath at P7's place). Returns a dict of lists, one value per block l = 1..depth:

    - ``"BN1"``: Delta of the input of block l's first BN,
    - ``"BN2"``: Delta of the input of block l's second BN,
    - ``"out"``: Delta of block l's output x_l, the input of block l+1's BN1;
      for P5/P6 compare with ``ratio_residual_depth(p, var_x0, l)`` (Eqs. 26, 27, 31),
      for P2-P4 ``"BN2"`` is the non-residual ratio of Eq. 29.

    :data:`NEXT_BN` says which one a dropout at each position reaches first.
    ``bn="train"`` is the paper's module test: BN normalizes with batch
    statistics in both passes, so a dropout placed before a BN (P1-P4) is
    renormalized away at the block output and looks harmless. ``bn="running"``
    is deployment: the training pass (dropout on) records BN's running
    statistics and the test pass runs everything in eval mode with them, so
    the variance shift at the next BN input shows up downstream. The global
    random state is left as it was.
    """
    if bn not in ("train", "running"):
        raise ValueError(f"bn must be 'train' (batch statistics in both passes) or 'running'; got {bn!r}")
    if position not in NEXT_BN:
        raise ValueError(f"position must be one of {', '.join(NEXT_BN)}; got {position!r}")
    check_p(p)
    batch = batch or default_batch()
    g = _gen(seed)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from the global generator
        blocks = nn.ModuleList(mlp_block(width, position, p, residual=residual, generator=g) for _ in range(depth))
    x0 = torch.randn(batch, width, generator=g, dtype=torch.float64) * math.sqrt(var_x0)
    for m in blocks.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, the batch statistics
    seen: dict[tuple[bool, int, str], float] = {}
    phase = {"train": True}

    def hook_for(block: int, name: str):
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            seen[(phase["train"], block, name)] = batch_variance(inputs[0]).mean().item()
        return hook

    handles = []
    for i, b in enumerate(blocks):
        bn1, bn2 = [m for m in b.modules() if isinstance(m, nn.BatchNorm1d)]
        handles += [bn1.register_forward_hook(hook_for(i, "BN1")), bn2.register_forward_hook(hook_for(i, "BN2"))]

    def run() -> None:
        h = x0
        for i, b in enumerate(blocks):
            h = b(h)
            seen[(phase["train"], i, "out")] = batch_variance(h).mean().item()

    try:
        with torch.no_grad(), seeded_masks(seed, x0.device):
            blocks.train()
            run()
            phase["train"] = False
            if bn == "running":
                blocks.eval()
            set_dropout(blocks, False)
            run()
    finally:
        for h in handles:
            h.remove()
    return {name: [seen[(False, i, name)] / seen[(True, i, name)] for i in range(depth)]
            for name in ("BN1", "BN2", "out")}


def shift_at_next_bn(depth: int, position: str = "P6", p: float = 0.5, width: int = 128, batch: int | None = None,
                     seed: int = 0, var_x0: float = 1.0) -> list[float]:
    """Delta at the input of the first BN after the dropout of each of ``depth`` stacked blocks.

    ``stacked_ratios(...)[NEXT_BN[position]]``: the variance shift that
    Kim et al. (Section 2.3, Propositions 3-4) compare between positions.
    For P2-P4 it stays at the non-residual ratio (pi-1)/(pi/q-1) at every
    depth; for P5-P7 the skip connection lifts it towards 1 (Eq. 31); for P0
    it compounds with depth, because the shortcut carries the dropped input.
    """
    return stacked_ratios(depth, position, p, width, batch, seed, var_x0)[NEXT_BN[position]]


# --------------------------------------------------------------------------- Proposition 5: the head


def head_variances_iid(
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
    (``"H4_formula"``, ``"H5_formula"``: :func:`~droplab.variance.variance_at_h4`,
    :func:`~droplab.variance.variance_at_h5`) and ``"no_dropout"`` (Var[GAP(x)],
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
        "H4_formula": float(variance_at_h4(mu, sigma2, p, S)),
        "H5_formula": float(variance_at_h5(mu, sigma2, p, S)),
        "no_dropout_formula": sigma2 / S,
    }


def head_variances_on(
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
