"""The experiment registry: what each run of the book's sweeps is.

An :class:`Experiment` is a list of :class:`Config` (what differs between
runs: where dropout sits, with which p) and one :class:`Sizes` per scale (the
network's size, the data and the training :class:`droplab.train.Recipe`).
:func:`spec` resolves a (config, scale) into everything that decides a run;
:func:`plan` lists the (seed, config) runs of a sweep and shards them.
:mod:`droplab.sweep` trains them, :mod:`droplab.records` reads and tabulates
what they wrote.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterable, Sequence

from droplab import scale as _scale
from droplab.models import HEAD_POSITION_NAMES, POSITION_NAMES
from droplab.train import Recipe

SPLIT_SEED = 0          # the same training, validation and test images for every config and seed


# ----------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """One network of an experiment: the architecture and where dropout sits.

    ``p`` is its drop probability (None: the scale's ``Sizes.p``), so each
    position can carry the p chosen for it on the validation split.
    ``changes`` sets other fields of the run for this config alone (a size,
    e.g. ``("width", 32)``, or a :class:`droplab.train.Recipe` field, e.g.
    ``("augment", False)``): the pilot that chooses a regime varies these.
    ``baseline`` names the config this one is compared with in :func:`table`.
    """

    name: str
    arch: str = "preresnet"            # "preresnet" or "resnetv1"
    block: str = "basic"               # "basic" or "bottleneck" (PreResNet)
    dropout_at: str | None = None      # P0-P7 (droplab.models.POSITIONS)
    head_dropout_at: str | None = None  # H1-H7 (droplab.models.HEAD_POSITIONS)
    head_conv: bool = False
    norm: str = "batch"                # "batch", "group", "layer" (droplab.models.NORMS)
    baseline: str = "none"
    p: float | None = None
    changes: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Sizes:
    """How big one run is at one scale: the network, the data (``None`` sizes mean the
    whole split; ``val_size`` images are held out of the training images) and the
    training :class:`droplab.train.Recipe` (augmentation follows the data set)."""

    depth: int
    width: int
    train_size: int | None
    test_size: int | None
    recipe: Recipe
    val_size: int = 0
    p: float = 0.1
    bottleneck_depth: int = 11


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    configs: tuple[Config, ...]
    sizes: dict[str, Sizes] = field(hash=False)
    dataset: str = "fashion-mnist"

    @property
    def config_names(self) -> list[str]:
        return [c.name for c in self.configs]

    def config(self, name: str) -> Config:
        for c in self.configs:
            if c.name == name:
                return c
        raise ValueError(f"experiment {self.name!r} has no config {name!r}; "
                         f"valid configs are {', '.join(self.config_names)}")


SMOKE = Sizes(depth=8, width=8, train_size=256, test_size=256, val_size=128,
              recipe=Recipe(epochs=1, batch_size=64, warmup_epochs=0.5, eval_every=1))

# The evidence regime of chapters 3-4 (class scale), chosen by the `regime` pilot on the
# validation split: the no-dropout network fits its training images and generalizes worse.
EVIDENCE = Sizes(depth=8, width=16, train_size=1000, test_size=5000, val_size=2000,
                 recipe=Recipe(epochs=25, batch_size=64, lr=0.1, warmup_epochs=1.0, augment=False,
                               eval_every=25))
# The sizes the pilot started from (its configs change size, width, augmentation and epochs).
PILOT = Sizes(depth=8, width=16, train_size=1000, test_size=None, val_size=2000,
              recipe=Recipe(epochs=20, batch_size=64, lr=0.1, warmup_epochs=1.0, augment=False, eval_every=20))
PAPER = Sizes(depth=20, width=16, train_size=None, test_size=None, val_size=5000,
              recipe=Recipe(epochs=20, batch_size=128, eval_every=20))

P_GRID: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)


def _residual(name: str, paper_depth: int) -> Experiment:
    """P0-P7 on PreResNet (Kim et al. Table 1), Guideline 1 on bottleneck PreResNet
    (Table 2) and ResNetV1 (Table 3), each against its own no-dropout baseline."""
    configs = [Config("none")] + [Config(p, dropout_at=p) for p in POSITION_NAMES]
    configs += [Config("bottleneck-none", block="bottleneck", baseline="bottleneck-none"),
                Config("bottleneck-P6", block="bottleneck", dropout_at="P6", baseline="bottleneck-none"),
                Config("resnetv1-none", arch="resnetv1", baseline="resnetv1-none"),
                Config("resnetv1-P6", arch="resnetv1", dropout_at="P6", baseline="resnetv1-none")]
    return Experiment(
        name, f"dropout at P0-P7 in every residual block, PreResNet-{paper_depth} at paper scale "
              f"(Kim et al. Tables 1-3, Guideline 1)",
        tuple(configs),
        {"smoke": SMOKE, "class": EVIDENCE,
         "paper": replace(PAPER, depth=paper_depth, bottleneck_depth=paper_depth if paper_depth % 9 == 2 else 29)})


def _head() -> Experiment:
    """H1-H7 in a MobileNetV2-style head (Kim et al. Figure 4, Tables 5-6, Guideline 2)."""
    configs = [Config("none", head_conv=True)]
    configs += [Config(h, head_dropout_at=h, head_conv=True) for h in HEAD_POSITION_NAMES]
    configs += [Config("P6+H4", dropout_at="P6", head_dropout_at="H4", head_conv=True)]
    return Experiment(
        "head", "dropout at H1-H7 in a head with a 1x1 Conv-BN-ReLU before GAP, and Guidelines 1+2 "
                "together (Kim et al. Figure 4, Tables 5-6, Guideline 2)",
        tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


# Noise-matched H4 and H5 (chapter 4): on the GAP input of the class-scale no-dropout head
# network, dropout noise reaches the FC layer 24.6 times larger from H5 than from H4 at equal p
# (``inconsistency.head_variances_on``; chapter 4 measures it again and checks these rates). With noise
# proportional to p/q, H4 at p = 0.73 adds as much noise as H5 at its tuned p = 0.1, and H5 at
# p = 0.0045 as little as H4 at p = 0.1.
NOISE_MATCHED: dict[str, float] = {"H4-matched": 0.73, "H5-matched": 0.0045}


def _tuning(name: str, positions: Sequence[str], head: bool, extra: Sequence[Config] = ()) -> Experiment:
    """Each position at each drop probability of ``P_GRID``: the runs on which each position's
    best p is chosen by validation accuracy (never test accuracy); ``extra`` configs follow."""
    key = "head_dropout_at" if head else "dropout_at"
    configs = [Config("none", head_conv=head)]
    configs += [Config(f"{pos}-p{p:g}", p=p, head_conv=head, **{key: pos}) for pos in positions for p in P_GRID]
    configs += list(extra)
    return Experiment(name, f"drop probability {', '.join(f'{p:g}' for p in P_GRID)} at "
                            f"{', '.join(positions)}, chosen on the validation split (chapters 3-4)",
                      tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


def _regime() -> Experiment:
    """The pilot that chose the evidence regime (chapter 3): no-dropout networks of several
    training-set sizes, widths and with or without augmentation, scored on validation."""
    configs = []
    for n in (1000, 2000):
        for w in (8, 16):
            for aug in (False, True):
                configs.append(Config(f"n{n}-w{w}-{'aug' if aug else 'noaug'}", baseline="",
                                      changes=(("train_size", n), ("width", w), ("augment", aug))))
    configs.append(Config("n1000-w32-noaug", baseline="", changes=(("train_size", 1000), ("width", 32),
                                                                   ("augment", False))))
    configs += [Config(f"n1000-w16-noaug-e{e}", baseline="", changes=(("train_size", 1000), ("width", 16),
                                                                      ("augment", False), ("epochs", e)))
                for e in (25, 30)]
    return Experiment("regime", "pilot: train-set size, width and augmentation of the no-dropout "
                                "PreResNet-8, to find where it fits its training images and overfits",
                      tuple(configs), {"smoke": SMOKE, "class": PILOT, "paper": PAPER})


def _precision() -> Experiment:
    """bf16 autocast with channels_last against fp32 contiguous, paired by seed, for none, P0
    and P6 (issue 17): does the CPU fast path change what the networks learn?"""
    fp32, bf16 = (("precision", "fp32"), ("channels_last", False)), (("precision", "bf16"), ("channels_last", True))
    configs = []
    for pos in ("none", "P0", "P6"):
        at = None if pos == "none" else pos
        configs += [Config(f"{pos}-fp32", dropout_at=at, baseline="", changes=fp32),
                    Config(f"{pos}-bf16", dropout_at=at, baseline=f"{pos}-fp32", changes=bf16)]
    return Experiment("precision", "bf16 autocast + channels_last vs fp32 contiguous, paired by seed, "
                                   "for none, P0 and P6 (the CPU fast path)",
                      tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


GROUP_EPOCHS: tuple[tuple[str, Any], ...] = (("epochs", 50), ("eval_every", 50))


def _norm() -> Experiment:
    """Dropout before the norm (P4) and after it (P6), in a PreResNet with BN and with
    GroupNorm (chapter 6): does the harm of P4 need BN's running statistics?"""
    base = [Config("none"), Config("P4", dropout_at="P4"), Config("P6", dropout_at="P6")]
    configs = base + [Config(f"group-{c.name}", dropout_at=c.dropout_at, norm="group", baseline="group-none")
                      for c in base]
    # GroupNorm fits 88 % of the training images in EVIDENCE's 25 epochs; in 50 it fits them (pilot: 99.5 %).
    configs += [Config(f"group-e50-{c.name}", dropout_at=c.dropout_at, norm="group", baseline="group-e50-none",
                       changes=GROUP_EPOCHS) for c in base]
    return Experiment("norm", "dropout before (P4) and after (P6) the second norm of every block, "
                              "PreResNet with BatchNorm vs GroupNorm (25 and 50 epochs) (chapter 6)",
                      tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


# The ViT of chapter 6 (droplab.transformer): 4 pre-LN blocks of width 64 on 7x7 patches, AdamW.
# On 1000 training images for 60 epochs at lr 2e-3 it fits them (99 %) and generalizes worse
# (72 % on validation), the regime in which a regularizer can help, like EVIDENCE for the ResNets.
VIT_SMOKE = replace(SMOKE, depth=2, width=16, recipe=replace(SMOKE.recipe, optimizer="adamw", lr=1e-3,
                                                             weight_decay=0.05))
VIT_EVIDENCE = replace(EVIDENCE, depth=4, width=64, recipe=replace(
    EVIDENCE.recipe, epochs=60, eval_every=60, optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_epochs=2.0))
VIT_PAPER = replace(PAPER, depth=6, width=192, recipe=replace(PAPER.recipe, optimizer="adamw", lr=1e-3,
                                                               weight_decay=0.05, epochs=100, eval_every=100))


def _vit() -> Experiment:
    """Dropout at T0-T4 of a small pre-LN ViT (chapter 6), each against no dropout."""
    from droplab.transformer import TRANSFORMER_POSITION_NAMES

    configs = [Config("none", arch="vit", norm="layer")]
    configs += [Config(t, arch="vit", norm="layer", dropout_at=t) for t in TRANSFORMER_POSITION_NAMES]
    return Experiment("vit", "dropout at T0-T4 of a pre-LN vision transformer on 7x7 patches (chapter 6)",
                      tuple(configs), {"smoke": VIT_SMOKE, "class": VIT_EVIDENCE, "paper": VIT_PAPER})


# Early dropout (Liu et al. 2023): P6 on for the first k of the 25 epochs, then off; k is chosen
# on validation. In EVIDENCE the no-dropout net overfits; UNDERFIT is the same net at width 8
# with augmentation, which the `regime` pilot found fitting 81 % of its training images.
EARLY_EPOCHS: tuple[int, ...] = (5, 10, 15)
UNDERFIT: tuple[tuple[str, Any], ...] = (("width", 8), ("augment", True))


def _early() -> Experiment:
    """Standard dropout, early dropout (on for the first k epochs) and none at P6, in the
    overfitting regime and in an underfitting one (chapter 6)."""
    configs = []
    for regime, changes in (("", ()), ("underfit-", UNDERFIT)):
        base = f"{regime}none"
        configs += [Config(base, baseline=base, changes=changes),
                    Config(f"{regime}P6", dropout_at="P6", baseline=base, changes=changes)]
        configs += [Config(f"{regime}P6-early{k}", dropout_at="P6", baseline=base,
                           changes=changes + (("dropout_epochs", k),)) for k in EARLY_EPOCHS]
    return Experiment("early", f"early dropout: P6 on for the first {', '.join(map(str, EARLY_EPOCHS))} "
                               f"epochs only, vs all the way and none, overfitting and underfitting (chapter 6)",
                      tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    _residual("residual", 20), _residual("residual-56", 56), _head(),
    _tuning("residual-p", ("P0", "P2", "P4", "P6", "P7", "P7path"), head=False),
    _tuning("head-p", ("H4", "H5"), head=True,
            extra=[Config(n, p=p, head_conv=True, head_dropout_at=n[:2]) for n, p in NOISE_MATCHED.items()]),
    _regime(), _precision(), _norm(), _vit(), _early())}

# Augmentation per data set: Fashion-MNIST and CIFAR crop (pad 2 at 28 px, 4 at 32 px) and flip;
# the synthetic patterns are not mirror-symmetric, so no flip there.
AUGMENT: dict[str, dict[str, Any]] = {
    "fashion-mnist": {"pad": 2, "flip": True}, "cifar10": {"pad": 4, "flip": True},
    "cifar100": {"pad": 4, "flip": True}, "synthetic": {"pad": 2, "flip": False},
}


def get(experiment: str | Experiment) -> Experiment:
    """The registered experiment called ``experiment`` (an error lists the valid names)."""
    if isinstance(experiment, Experiment):
        return experiment
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; valid experiments are {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[experiment]


_DATA_FIELDS = ("train_size", "val_size", "test_size")


def spec(experiment: str | Experiment, config: str | Config, scale: str, dataset: str | None = None
         ) -> dict[str, dict[str, Any]]:
    """Everything that decides one run besides its seed, as a JSON-ready dict: the network
    (``net``, a :class:`droplab.models.NetConfig`), the ``recipe`` and the ``data`` sizes.
    A record whose stored spec differs from this one is stale (:func:`check_records`)."""
    from droplab import data, models

    exp = get(experiment)
    cfg = config if isinstance(config, Config) else exp.config(config)
    ds = dataset or exp.dataset
    sizes = exp.sizes[_scale.validate(scale)]
    changes = dict(cfg.changes)
    net_fields = {f.name for f in fields(models.NetConfig)}
    recipe_fields = {f.name for f in fields(Recipe)}
    unknown = set(changes) - net_fields - recipe_fields - set(_DATA_FIELDS)
    if unknown:
        raise ValueError(f"config {cfg.name!r} changes unknown fields {sorted(unknown)}")
    info = data.info(ds)
    net = models.NetConfig(
        arch=cfg.arch, block=cfg.block, dropout_at=cfg.dropout_at, head_dropout_at=cfg.head_dropout_at,
        head_conv=cfg.head_conv, norm=cfg.norm, p=sizes.p if cfg.p is None else cfg.p, in_channels=info.shape[0],
        num_classes=info.num_classes, width=sizes.width,
        depth=sizes.bottleneck_depth if cfg.block == "bottleneck" else sizes.depth)
    net = replace(net, **{k: v for k, v in changes.items() if k in net_fields})
    recipe = replace(sizes.recipe, **AUGMENT.get(ds, {}))
    recipe = replace(recipe, **{k: v for k, v in changes.items() if k in recipe_fields})
    sizes_data = {k: getattr(sizes, k) for k in _DATA_FIELDS}
    sizes_data.update({k: v for k, v in changes.items() if k in _DATA_FIELDS})
    return {"net": asdict(net), "recipe": asdict(recipe), "data": {"dataset": ds, **sizes_data,
                                                                   "split_seed": SPLIT_SEED}}


def build_model(experiment: str | Experiment, config: str | Config, scale: str, dataset: str | None = None):
    """The network of ``config`` at ``scale`` (``models.build`` of its spec)."""
    from droplab import models

    return models.build(models.NetConfig(**spec(experiment, config, scale, dataset)["net"]))


def splits(dataset: str, train_size: int | None, val_size: int, test_size: int | None,
           split_seed: int = SPLIT_SEED) -> tuple[Any, Any, Any]:
    """The training, validation and test images of a run: the validation images are held
    out of the training split (:func:`droplab.data.holdout`), the test images are a
    class-balanced subset of the test split; the same for every config and seed."""
    from droplab import data

    full = data.load(dataset, "train")
    tr, va = data.holdout(full, train_size, val_size, seed=split_seed)
    te = data.load(dataset, "test")
    if test_size:
        te = data.subset(te, test_size, seed=split_seed)
    return tr, va, te


# ----------------------------------------------------------------------------
# Planning and sharding
# ----------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Run:
    """One (seed, config) pair; the plan is sorted by seed, then registry order."""

    seed: int
    index: int
    config: str

    @property
    def key(self) -> str:
        return f"{self.config}-seed{self.seed}"


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"bad shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4, 1/4, 2/4, 3/4 "
                         f"for four workers")
    return i, n


def _seeds(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}")
        return list(range(seeds))
    return sorted(set(int(s) for s in seeds))


def plan(experiment: str | Experiment, seeds: int | Iterable[int] = 1, only: Sequence[str] | None = None,
         shard: str | tuple[int, int] | None = None) -> list[Run]:
    """The runs of a sweep, in order; ``shard=(i, n)`` keeps those at positions i, i+n, i+2n, ..."""
    exp = get(experiment)
    names = exp.config_names if only is None else list(only)
    for name in names:
        exp.config(name)  # raises on an unknown name
    runs = sorted(Run(s, exp.config_names.index(c), c) for s in _seeds(seeds) for c in names)
    i, n = shard if isinstance(shard, tuple) else parse_shard(shard)
    return runs[i::n]
