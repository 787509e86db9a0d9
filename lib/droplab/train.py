"""Training and evaluation: one code path for the CPU and the GPU.

The recipe is airbench's fast path without the tricks that would themselves
regularize (no label smoothing, EMA or test-time augmentation: this book
measures dropout):

- the data set lives on the device as one normalised float tensor
  (per-channel mean and std of the *train* split);
- random crop and horizontal flip are drawn per sample in one batched op on
  the device (:func:`droplab.data.random_crop_flip`); shuffling is a device
  ``randperm``;
- no host synchronisation per step: loss and accuracy are summed in device
  tensors and read once per epoch;
- SGD with Nesterov momentum, or AdamW (fused on CUDA), linear warm-up then cosine or
  linear decay, per step (the whole recipe is one :class:`Recipe`);
- bf16 autocast and channels_last where the device computes bf16 natively
  (CUDA, CPUs with AMX or AVX-512-BF16), fp32 and contiguous tensors
  elsewhere; ``torch.compile`` on request (:func:`fast_path`).

A loss that turns NaN or infinite ends the run and the history says
``diverged=True``; a sweep goes on with the next run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from droplab import data as _data
from droplab import repro, scale
from droplab.dropout import set_dropout

EPS = 1e-12


# -------- The loss: cross-entropy on logits, or NLL on probabilities (H7) -------------

def outputs_probabilities(model: nn.Module) -> bool:
    """Whether ``model`` returns probabilities (dropout at H7, after the softmax)."""
    inner = getattr(model, "_orig_mod", model)   # a torch.compile wrapper
    return bool(getattr(inner, "outputs_probabilities", False))


def criterion(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss for ``model``, averaged over the batch.

    Cross-entropy on the logits, or, for a model whose head ends in softmax and
    then dropout (H7, Kim et al. Section 2.4), ``-log(y_hat_c)`` of the dropped
    probabilities (clamped at 1e-12 so a dropped correct class gives a large but
    finite loss).
    """
    if outputs_probabilities(model):
        return lambda out, y: F.nll_loss(torch.log(out.float().clamp_min(EPS)), y)
    return lambda out, y: F.cross_entropy(out.float(), y)


# -------- Data on the device ----------------------------------------------------------

def _unpack(d: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(d, (tuple, list)) and len(d) == 2:
        return d[0], d[1]
    raise TypeError(f"expected a droplab.data.Split or an (images, labels) tuple, got {type(d).__name__}")


def input_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the [0, 1] scale."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()


def to_device(d: Any, dev: torch.device, stats: tuple[Sequence[float], Sequence[float]] | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as a normalised float tensor and labels, on ``dev``.

    uint8 images are scaled to [0, 1] and normalised with ``stats`` (mean, std);
    float images are taken as already normalised.
    """
    images, labels = _unpack(d)
    x = images.to(dev, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
        if stats is not None:
            mean = torch.tensor(stats[0], device=dev).view(1, -1, 1, 1)
            std = torch.tensor(stats[1], device=dev).view(1, -1, 1, 1)
            x = (x - mean) / std
    return x.float(), labels.to(dev, non_blocking=True).long()


# -------- History ---------------------------------------------------------------------

@dataclass
class History:
    """Per-epoch metrics of one run: mean train loss and accuracy (with dropout and
    augmentation on), test loss and accuracy (NaN on epochs not evaluated), and
    the wall time of each epoch, evaluation included. ``diverged`` says the loss
    became NaN or infinite and the run stopped there; ``precision`` and
    ``channels_last`` say which fast path trained it (:func:`fast_path`).
    ``dropout_on`` says, per epoch, whether the dropout layers were on (False after
    ``Recipe.dropout_epochs``, early dropout, chapter 6; True for a network without any)."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    diverged: bool = False
    precision: str = "fp32"
    channels_last: bool = False
    dropout_on: list[bool] = field(default_factory=list)

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    @property
    def final_test_acc(self) -> float:
        """The last evaluated test accuracy (NaN if none, or if the run diverged)."""
        if self.diverged:
            return math.nan
        done = [a for a in self.test_acc if not math.isnan(a)]
        return done[-1] if done else math.nan

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; non-finite numbers become None."""
        fix = lambda v: [x if isinstance(x, bool) or math.isfinite(x) else None for x in v]
        out = {k: fix(v) if isinstance(v, list) else v for k, v in asdict(self).items()}
        out["epochs_run"] = self.epochs_run
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        back = lambda v: [math.nan if x is None else float(x) for x in v]
        n = len(d["train_loss"])   # records from before early dropout had dropout on in every epoch
        return cls(**{k: back(d[k]) for k in ("train_loss", "train_acc", "test_loss", "test_acc", "seconds")},
                   diverged=bool(d.get("diverged", False)), precision=d.get("precision", "fp32"),
                   channels_last=bool(d.get("channels_last", False)),
                   dropout_on=[bool(x) for x in d.get("dropout_on", [True] * n)])


# -------- Training --------------------------------------------------------------------

def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """Learning-rate multiplier at ``step``: linear warm-up over ``warmup`` steps,
    then cosine (``0.5 (1 + cos(pi t))``) or linear (``1 - t``) decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else max(0.0, 1 - t)


def _show_progress(progress: bool) -> bool:
    """tqdm bars stay quiet at smoke scale and under pytest."""
    return progress and scale.current() != "smoke" and "PYTEST_CURRENT_TEST" not in os.environ


PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
SCHEDULES: tuple[str, ...] = ("cosine", "linear")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")


@dataclass(frozen=True)
class Recipe:
    """How a network is trained: everything :func:`fit` needs besides the data and the seed.

    SGD with Nesterov momentum, linear warm-up over ``warmup_epochs`` (at most
    half the run) then ``schedule`` decay to 0, per step; random crop (pad
    ``pad``, ``pad_mode``) and horizontal flip when ``augment``. The test split
    (if any) is evaluated every ``eval_every`` epochs and after the last one.

    The fast path: ``precision`` is ``"bf16"`` (autocast), ``"fp32"``, or
    ``"auto"``: bf16 on CUDA and on CPUs with native bf16 (AMX or AVX-512-BF16,
    as ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` reports), fp32 elsewhere,
    where emulated bf16 is several times slower. ``channels_last`` sets the
    memory format; None means the same choice as bf16: on for CUDA and native-bf16
    CPUs, off elsewhere. (On an AVX2-only CPU, torch 2.14.1's channels_last
    kernels were measured to corrupt memory for 4-channel convolutions and to
    give gradients up to 2 % apart from the contiguous ones, so they are not
    trusted there.) ``compile`` wraps the model in ``torch.compile``.
    ``optimizer`` "sgd" (the ResNets') or "adamw" (the ViT's: decoupled weight decay
    ``weight_decay``, ``momentum`` unused; Loshchilov & Hutter 2019).
    Early dropout (Liu et al. 2023, chapter 6): with ``dropout_epochs = k`` every dropout
    layer (DropPath too) is on for the first ``k`` epochs and off after; None: on all the way.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    augment: bool = True
    pad: int = 2
    flip: bool = True
    pad_mode: str = "reflect"
    eval_every: int = 1
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    dropout_epochs: int | None = None
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid schedules are {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid optimizers are {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid precisions are {', '.join(PRECISIONS)}")
        if self.epochs < 1 or self.batch_size < 2 or self.eval_every < 1:
            raise ValueError(f"need epochs >= 1, batch_size >= 2 and eval_every >= 1, got "
                             f"{self.epochs}, {self.batch_size}, {self.eval_every}")
        if (k := self.dropout_epochs) is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"dropout_epochs is the number of epochs trained with dropout on (early dropout), "
                             f"an int >= 0, or None for dropout all the way; got {k!r}")


def native_bf16(dev: torch.device) -> bool:
    """Whether ``dev`` computes in bf16 natively (CUDA; a CPU with AMX or AVX-512-BF16)."""
    if dev.type == "cuda":
        return True
    if dev.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


@dataclass(frozen=True)
class FastPath:
    """What :func:`fit` chose for this device and recipe (stored in every run record)."""

    precision: str
    channels_last: bool
    compile: bool
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None


def fast_path(recipe: Recipe, dev: torch.device) -> FastPath:
    """The precision and memory format :func:`fit` uses for ``recipe`` on ``dev`` (Recipe's docstring)."""
    native = native_bf16(dev)
    if recipe.precision == "auto":
        precision = "bf16" if native else "fp32"
        reason = (f"auto: {dev.type} {'has' if native else 'has no'} native bf16"
                  + ("" if native or dev.type != "cpu" else ", so fp32 (emulated bf16 is slower)"))
    else:
        precision, reason = recipe.precision, "set by the recipe"
    cl = native if recipe.channels_last is None else recipe.channels_last
    return FastPath(precision, cl, recipe.compile, reason)


def _as_input(x: torch.Tensor, path: FastPath) -> torch.Tensor:
    """A batch in the memory format of ``path`` (images only: channels_last needs 4-d tensors)."""
    return x.contiguous(memory_format=torch.channels_last) if path.channels_last and x.dim() == 4 else x


def _autocast(dev: torch.device, path: FastPath) -> Any:
    dtype = path.autocast_dtype
    return torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def fit(model: nn.Module, train: Any, test: Any | None, recipe: Recipe | int | None = None, *,
        seed: int = 0, device: str | torch.device | None = None, progress: bool = True,
        deterministic: bool = True, **changes: Any) -> History:
    """Train ``model`` with ``recipe`` on ``train`` and return its :class:`History`.

    ``recipe`` is a :class:`Recipe`, or a number of epochs (the default recipe
    otherwise); keyword ``changes`` replace its fields, so
    ``fit(net, tr, te, 10, lr=0.05, augment=False)`` and
    ``fit(net, tr, te, Recipe(epochs=10, lr=0.05, augment=False))`` are the same run.
    ``train``/``test`` are :class:`droplab.data.Split` (uint8) or (images, labels)
    tuples. The model moves to ``device`` (default :func:`droplab.repro.device`).
    The train split's per-channel mean/std normalise both splits and are kept on
    the model as ``model.input_stats`` for :func:`evaluate` and :func:`predict`,
    with the chosen :class:`FastPath` as ``model.fast_path``. Each epoch uses
    ``len(train) // batch_size`` full batches of a fresh permutation (BN needs
    more than one sample per batch). The same seed on the same machine gives
    the same history (``deterministic=False`` lets cuDNN pick the fastest,
    non-deterministic kernels); weights are initialised by the caller.
    After ``recipe.dropout_epochs`` epochs (early dropout) each epoch puts only the dropout layers
    in eval mode (:func:`droplab.dropout.set_dropout`): BN still trains on batch statistics, the
    net trains as it is evaluated, and the model itself is not changed.
    """
    if recipe is None or isinstance(recipe, int):
        changes = {"epochs": recipe, **changes} if recipe is not None else changes
        recipe = Recipe()
    try:
        r = replace(recipe, **changes)
    except TypeError as exc:
        valid = ", ".join(f.name for f in fields(Recipe))
        raise TypeError(f"{exc}; the fields of a training Recipe are {valid}") from None
    dev = torch.device(device) if device is not None else repro.device()
    repro.seed_everything(seed, deterministic=deterministic)
    gen = torch.Generator(device=dev).manual_seed(seed)
    path = fast_path(r, dev)

    stats = input_stats(_unpack(train)[0])
    model.input_stats = stats  # type: ignore[assignment]
    model.fast_path = path  # type: ignore[assignment]
    x_train, y_train = to_device(train, dev, stats)
    test_on_dev = to_device(test, dev, stats) if test is not None else None   # normalised once
    n = len(y_train)
    bs = min(r.batch_size, n)
    steps = n // bs
    total = steps * r.epochs
    warmup = min(round(r.warmup_epochs * steps), total // 2)

    model.to(dev)
    if path.channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if path.compile else model
    loss_fn = criterion(model)
    fused = {"fused": True} if dev.type == "cuda" else {}
    opt = (torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay, **fused)
           if r.optimizer == "adamw" else torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum,
                                                           nesterov=r.nesterov, weight_decay=r.weight_decay, **fused))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, r.schedule))

    hist = History(precision=path.precision, channels_last=path.channels_last)
    from tqdm.auto import tqdm
    bar = tqdm(range(r.epochs), desc="epochs", unit="epoch", leave=False, disable=not _show_progress(progress))
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        dropout_on = r.dropout_epochs is None or epoch < r.dropout_epochs
        if not dropout_on:
            set_dropout(model, False)                  # early dropout: off from here on (chapter 6)
        hist.dropout_on.append(dropout_on)
        perm = torch.randperm(n, device=dev, generator=gen)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            x, y = x_train[idx], y_train[idx]
            if r.augment:
                x = _data.random_crop_flip(x, pad=r.pad, flip=r.flip, mode=r.pad_mode, generator=gen)
            with _autocast(dev, path):
                out = net(_as_input(x, path))
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
        seen = steps * bs
        train_loss = loss_sum.item() / seen            # the one host sync of the epoch
        hist.train_loss.append(train_loss)
        hist.train_acc.append(correct.item() / seen)
        if not math.isfinite(train_loss):
            hist.diverged = True
        last = epoch == r.epochs - 1 or hist.diverged
        if test_on_dev is not None and (last or (epoch + 1) % r.eval_every == 0) and not hist.diverged:
            tl, ta = evaluate(net, test_on_dev, device=dev)
        else:
            tl, ta = math.nan, math.nan
        hist.test_loss.append(tl)
        hist.test_acc.append(ta)
        hist.seconds.append(time.perf_counter() - t0)
        if not math.isnan(ta):
            bar.set_postfix(test_acc=f"{ta:.4f}")
        if hist.diverged:
            break
    bar.close()
    model.eval()
    return hist


# -------- Evaluation, prediction, BN recalibration ------------------------------------

def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def stats_for(model: nn.Module, d: Any, stats: Any) -> Any:
    """The (mean, std) that normalise ``d`` for ``model``: ``stats``, else the ones :func:`fit` kept
    on the model, else ``d``'s own."""
    if stats is not None:
        return stats
    inner = getattr(model, "_orig_mod", model)
    return getattr(inner, "input_stats", None) or input_stats(_unpack(d)[0])


def eval_batch_size(dev: torch.device) -> int:
    """The batch of an evaluation pass: 1024 on a GPU; 128 on a CPU, where a batch's
    activations then stay in cache (measured 3x faster than 1024 for PreResNet-8, width 16)."""
    return 1024 if dev.type == "cuda" else 128


@torch.no_grad()
def predict(model: nn.Module, data: Any, batch_size: int | None = None, *, stats: Any = None,
            device: torch.device | None = None) -> torch.Tensor:
    """The model's outputs on ``data`` in eval mode (logits, or probabilities for
    H7 models), as a float tensor on the model's device, in one batched pass
    without autograd, with the precision and memory format :func:`fit` trained
    it with (``model.fast_path``; fp32 for a model that ``fit`` never saw).
    Restores the model's mode."""
    dev = device or model_device(model)
    batch_size = batch_size or eval_batch_size(dev)
    x_all, _ = to_device(data, dev, stats_for(model, data, stats))
    inner = getattr(model, "_orig_mod", model)
    path = getattr(inner, "fast_path", None) or FastPath("fp32", False, False, "not trained by fit")
    was_training = model.training
    model.eval()
    outs = []
    for i in range(0, len(x_all), batch_size):
        with _autocast(dev, path):
            outs.append(model(_as_input(x_all[i:i + batch_size], path)).float())
    model.train(was_training)
    return torch.cat(outs)


def fit_each(builders: dict[str, Callable[[], nn.Module]], train: Any, test: Any | None,
             recipe: Recipe | int | dict[str, Recipe | int], seeds: Sequence[int], *, progress: bool = True,
             desc: str = "trainings", **changes: Any) -> dict[tuple[str, int], tuple[nn.Module, History]]:
    """Train every (config, seed) pair in memory: for each seed and each named builder,
    seed everything with that seed (so seed ``k`` of every config starts from the same
    weights where the networks share a shape), build the network and :func:`fit` it.

    ``recipe`` is one recipe for all, or one per config name; ``changes`` are passed to
    every :func:`fit`. Returns ``{(name, seed): (model, history)}``, the trained models
    included; one progress bar counts the runs. The chapters' comparisons of several
    networks over seeds (chapters 1 and 5) are one call each; a sweep whose records must
    outlive the chapter uses :mod:`droplab.sweep` instead."""
    from tqdm.auto import tqdm

    jobs = [(name, seed) for seed in seeds for name in builders]
    out: dict[tuple[str, int], tuple[nn.Module, History]] = {}
    for name, seed in tqdm(jobs, desc=desc, disable=not progress):
        repro.seed_everything(seed)
        net = builders[name]()
        rec = recipe[name] if isinstance(recipe, dict) else recipe
        out[name, seed] = (net, fit(net, train, test, rec, seed=seed, progress=False, **changes))
    return out


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int | None = None, *, stats: Any = None,
             device: torch.device | None = None) -> tuple[float, float]:
    """Mean loss (as :func:`criterion`) and accuracy of ``model`` on ``data``, in eval mode.

    uint8 images are normalised with ``stats``, else with ``model.input_stats``
    (set by :func:`fit`), else with the data's own statistics.
    """
    dev = device or model_device(model)
    out = predict(model, data, batch_size, stats=stats, device=dev)
    y = _unpack(data)[1].to(dev).long()
    loss = criterion(model)(out, y).item()
    return loss, (out.argmax(1) == y).float().mean().item()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Any, batch_size: int = 256, num_batches: int | None = None,
                   *, stats: Any = None) -> nn.Module:
    """Re-estimate every BN layer's running mean and variance with dropout off.

    The running statistics are reset and recomputed as a cumulative average
    (``momentum=None``) over ``num_batches`` batches (default: all of ``data``),
    with BN in train mode and every dropout layer in eval mode: the statistics
    the test-time network actually sees (the variance shift of Li et al. 2019,
    Kim et al. Definition 2). Momentum is restored and the model left in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    dev = model_device(model)
    x_all, _ = to_device(data, dev, stats_for(model, data, stats))
    momenta = [m.momentum for m in bns]
    model.train()
    set_dropout(model, False)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    try:
        for b, i in enumerate(range(0, len(x_all), batch_size)):
            if num_batches is not None and b >= num_batches:
                break
            if len(x_all[i:i + batch_size]) > 1:          # BN needs two samples
                model(x_all[i:i + batch_size])
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    return model
