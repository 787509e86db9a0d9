"""The experiment registry: what each run of the book's sweeps is.

A run is one :class:`RunSpec`: the network (:class:`droplab.networks.NetConfig`), the
training :class:`droplab.train.Recipe` and the data (:class:`droplab.data.DataSpec`).
An :class:`Experiment` holds one base spec per scale and a list of :class:`Config`,
each a name, the config it is compared with and its overrides of the base;
:func:`spec` resolves (config, scale, seed) into the run's spec and
:func:`plan` lists the (seed, config) runs of a sweep and shards them. An
experiment also declares, before its runs, its primary contrasts
(:class:`Contrast`) and the seeds it uses, so that tuning, pilot and test
networks never share a seed. :func:`train_one` trains one run in memory;
:mod:`droplab.sweep` trains and records them, :mod:`droplab.records` reads them
back and :mod:`droplab.compare` compares them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from droplab import scale as _scale
from droplab.blocks import HEAD_POSITION_NAMES, POSITION_NAMES, TRANSFORMER_POSITION_NAMES
from droplab.data import DataSpec
from droplab.networks import NetConfig
from droplab.train import Recipe

SPLIT_SEED = 0          # the images of every run of an experiment whose split does not vary with the seed
SECTIONS: dict[str, type] = {"net": NetConfig, "recipe": Recipe, "data": DataSpec}


# ----------------------------------------------------------------------------
# One run: its spec
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunSpec:
    """Everything that decides one run besides its seed: the network, the recipe, the data.

    ``to_dict`` is its JSON form (a record's ``spec``); :meth:`stale_fields` says where a
    stored spec differs from this one."""

    net: NetConfig
    recipe: Recipe
    data: DataSpec

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> RunSpec:
        """The spec a record stores; an error names an unknown section or field."""
        unknown = set(stored) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown spec section(s) {sorted(unknown)}; a spec has {', '.join(SECTIONS)}")
        return cls(**{name: _section(name, kind(), stored.get(name, {})) for name, kind in SECTIONS.items()})

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]], scale: str) -> RunSpec:
        """This spec with some fields replaced, section by section (a :class:`PerScale` value
        takes its value at ``scale``)."""
        return replace(self, **{name: _section(name, getattr(self, name), {
            k: v.at(scale) if isinstance(v, PerScale) else v for k, v in changes.items()})
            for name, changes in overrides.items()})

    def stale_fields(self, stored: Any) -> list[str]:
        """The fields (``section.name``) in which a stored spec differs from this one.

        A field the stored spec lacks counts as its default value, so adding a field
        to the registry with its default does not make old records stale; any other
        difference does, and so do a field or a section the registry does not have."""
        if not isinstance(stored, Mapping):
            return ["spec"]
        out = [f"{name} (unknown section)" for name in stored if name not in SECTIONS]
        for name, kind in SECTIONS.items():
            want, have, defaults = asdict(getattr(self, name)), stored.get(name), asdict(kind())
            if not isinstance(have, Mapping):
                out.append(name)
                continue
            out += [f"{name}.{k}" for k, v in want.items() if have.get(k, defaults[k]) != v]
            out += [f"{name}.{k}" for k in have if k not in want]
        return out


def _section(name: str, base: Any, changes: Mapping[str, Any]) -> Any:
    kind = SECTIONS[name]
    valid = {f.name for f in fields(kind)}
    unknown = set(changes) - valid
    if unknown:
        raise ValueError(f"unknown {name} field(s) {sorted(unknown)}; the fields of {kind.__name__} are "
                         f"{', '.join(sorted(valid))}")
    return replace(base, **changes)


@dataclass(frozen=True)
class PerScale:
    """An override whose value depends on the scale (e.g. a bottleneck network's depth)."""

    smoke: Any
    class_: Any
    paper: Any

    def at(self, scale: str) -> Any:
        return {"smoke": self.smoke, "class": self.class_, "paper": self.paper}[_scale.validate(scale)]


# ----------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------

def _frozen(overrides: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(dict(overrides or {}).items()))


@dataclass(frozen=True)
class Config:
    """One network of an experiment: its ``name``, the config it is compared with
    (``baseline``; "" for none) and what it changes in the experiment's base spec, section by
    section: ``Config("P6", net={"dropout_at": "P6"})``, ``Config("aug", recipe={"augment": True})``,
    ``Config("n2000", data={"train_size": 2000})``."""

    name: str
    baseline: str = "none"
    net: tuple[tuple[str, Any], ...] = ()
    recipe: tuple[tuple[str, Any], ...] = ()
    data: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name in SECTIONS:
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @property
    def overrides(self) -> dict[str, dict[str, Any]]:
        return {name: dict(getattr(self, name)) for name in SECTIONS if getattr(self, name)}

    def to_dict(self) -> dict[str, Any]:
        """A record's ``config``: the name, the baseline and the overrides (JSON-ready)."""
        return {"name": self.name, "baseline": self.baseline,
                **{k: {f: asdict(v) if isinstance(v, PerScale) else v for f, v in o.items()}
                   for k, o in self.overrides.items()}}


@dataclass(frozen=True)
class Contrast:
    """A comparison declared before the runs: ``config`` minus ``baseline`` (paired by seed),
    with the sign ``claim`` predicts (+1: ``config`` is better)."""

    config: str
    baseline: str
    claim: str
    sign: int = 1

    @property
    def name(self) -> str:
        return f"{self.config} − {self.baseline}"


@dataclass(frozen=True)
class Experiment:
    """A set of configs trained over seeds. ``base`` is the spec every config starts from,
    per scale (the data set's channels, classes and augmentation are filled in by
    :func:`spec`). ``first_seed`` is the experiment's first seed (tuning and pilot experiments
    use seeds no test network uses); with ``split_per_seed`` each seed also draws its own
    training and validation images (``data.split_seed`` = the seed). ``primary`` are the
    contrasts declared before the runs, corrected together (:mod:`droplab.compare`);
    every other comparison of its records is exploratory."""

    name: str
    description: str
    configs: tuple[Config, ...]
    base: Mapping[str, RunSpec] = field(hash=False)
    dataset: str = "fashion-mnist"
    first_seed: int = 0
    split_per_seed: bool = False
    primary: tuple[Contrast, ...] = ()

    def __post_init__(self) -> None:
        names = self.config_names
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r} names a config twice")
        for c in self.primary:
            self.config(c.config), self.config(c.baseline)

    @property
    def config_names(self) -> list[str]:
        return [c.name for c in self.configs]

    def config(self, name: str) -> Config:
        for c in self.configs:
            if c.name == name:
                return c
        raise ValueError(f"experiment {self.name!r} has no config {name!r}; "
                         f"valid configs are {', '.join(self.config_names)}")

    def seeds(self, n: int) -> list[int]:
        """The experiment's first ``n`` seeds."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"the number of seeds must be an int of at least 1, got {n!r}")
        return list(range(self.first_seed, self.first_seed + n))


def _base(depth: int, width: int, recipe: Recipe, train_size: int | None, test_size: int | None,
          val_size: int = 0, p: float = 0.1, **net: Any) -> RunSpec:
    return RunSpec(NetConfig(depth=depth, width=width, p=p, **net), recipe,
                   DataSpec(train_size=train_size, val_size=val_size, test_size=test_size))


SMOKE = _base(8, 8, Recipe(epochs=1, batch_size=64, warmup_epochs=0.5, eval_every=1), 256, 256, 128)

# The first class regime of chapters 3-4, chosen by the `regime` pilot on the validation split:
# the no-dropout network fits its training images and generalizes worse (25 epochs, weight decay 5e-4).
EVIDENCE = _base(8, 16, Recipe(epochs=25, batch_size=64, lr=0.1, warmup_epochs=1.0, augment=False, eval_every=25),
                 1000, 5000, 2000)
# The sizes the `regime` pilot started from (its configs change size, width, augmentation and epochs).
PILOT = _base(8, 16, Recipe(epochs=20, batch_size=64, lr=0.1, warmup_epochs=1.0, augment=False, eval_every=20),
              1000, None, 2000)
PAPER = _base(20, 16, Recipe(epochs=20, batch_size=128, eval_every=20), None, None, 5000)

P_GRID: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)


def _at(position: str | None = None, **net: Any) -> dict[str, Any]:
    """The net overrides that put dropout at a residual (P0-P7, P7path) or head (H1-H7) position."""
    if position is not None:
        net["head_dropout_at" if position.startswith("H") else "dropout_at"] = position
    return net


def _residual(name: str, paper_depth: int) -> Experiment:
    """P0-P7 on PreResNet (Kim et al. Table 1), Guideline 1 on bottleneck PreResNet
    (Table 2) and ResNetV1 (Table 3), each against its own no-dropout baseline."""
    bottleneck = {"block": "bottleneck", "depth": PerScale(11, 11, paper_depth)}
    configs = [Config("none")] + [Config(p, net=_at(p)) for p in POSITION_NAMES]
    configs += [Config("bottleneck-none", "bottleneck-none", net=bottleneck),
                Config("bottleneck-P6", "bottleneck-none", net=_at("P6", **bottleneck)),
                Config("resnetv1-none", "resnetv1-none", net={"arch": "resnetv1"}),
                Config("resnetv1-P6", "resnetv1-none", net=_at("P6", arch="resnetv1"))]
    return Experiment(
        name, f"dropout at P0-P7 in every residual block, PreResNet-{paper_depth} at paper scale "
              f"(Kim et al. Tables 1-3, Guideline 1)",
        tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": replace(
            PAPER, net=replace(PAPER.net, depth=paper_depth))})


def _head() -> Experiment:
    """H1-H7 in a MobileNetV2-style head (Kim et al. Figure 4, Tables 5-6, Guideline 2)."""
    configs = [Config("none", net={"head_conv": True})]
    configs += [Config(h, net=_at(h, head_conv=True)) for h in HEAD_POSITION_NAMES]
    configs += [Config("P6+H4", net=_at("P6", head_dropout_at="H4", head_conv=True))]
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
    net = {"head_conv": True} if head else {}
    configs = [Config("none", net=net)]
    configs += [Config(f"{pos}-p{p:g}", net=_at(pos, p=p, **net)) for pos in positions for p in P_GRID]
    configs += list(extra)
    return Experiment(name, f"drop probability {', '.join(f'{p:g}' for p in P_GRID)} at "
                            f"{', '.join(positions)}, chosen on the validation split (chapters 3-4)",
                      tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


def _regime() -> Experiment:
    """The pilot that chose the first class regime (chapter 3): no-dropout networks of several
    training-set sizes, widths and with or without augmentation, scored on validation."""
    configs = [Config(f"n{n}-w{w}-{'aug' if aug else 'noaug'}", "", net={"width": w},
                      recipe={"augment": aug}, data={"train_size": n})
               for n in (1000, 2000) for w in (8, 16) for aug in (False, True)]
    configs.append(Config("n1000-w32-noaug", "", net={"width": 32}, recipe={"augment": False},
                          data={"train_size": 1000}))
    configs += [Config(f"n1000-w16-noaug-e{e}", "", net={"width": 16}, recipe={"augment": False, "epochs": e},
                       data={"train_size": 1000}) for e in (25, 30)]
    return Experiment("regime", "pilot: train-set size, width and augmentation of the no-dropout "
                                "PreResNet-8, to find where it fits its training images and overfits",
                      tuple(configs), {"smoke": SMOKE, "class": PILOT, "paper": PAPER})


def _precision() -> Experiment:
    """bf16 autocast with channels_last against fp32 contiguous, paired by seed, for none, P0
    and P6: does the CPU fast path change what the networks learn?"""
    fp32, bf16 = {"precision": "fp32", "channels_last": False}, {"precision": "bf16", "channels_last": True}
    configs = []
    for pos in ("none", "P0", "P6"):
        at = _at(None if pos == "none" else pos)
        configs += [Config(f"{pos}-fp32", "", net=at, recipe=fp32),
                    Config(f"{pos}-bf16", f"{pos}-fp32", net=at, recipe=bf16)]
    return Experiment("precision", "bf16 autocast + channels_last vs fp32 contiguous, paired by seed, "
                                   "for none, P0 and P6 (the CPU fast path)",
                      tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


GROUP_EPOCHS: dict[str, Any] = {"epochs": 50, "eval_every": 50}


def _norm() -> Experiment:
    """Dropout before the norm (P4) and after it (P6), in a PreResNet with BN and with
    GroupNorm (chapter 6): does the harm of P4 need BN's running statistics?"""
    positions = {"none": None, "P4": "P4", "P6": "P6"}
    configs = [Config(n, net=_at(p)) for n, p in positions.items()]
    configs += [Config(f"group-{n}", "group-none", net=_at(p, norm="group")) for n, p in positions.items()]
    # GroupNorm fits 88 % of the training images in EVIDENCE's 25 epochs; in 50 it fits them (pilot: 99.5 %).
    configs += [Config(f"group-e50-{n}", "group-e50-none", net=_at(p, norm="group"), recipe=GROUP_EPOCHS)
                for n, p in positions.items()]
    return Experiment("norm", "dropout before (P4) and after (P6) the second norm of every block, "
                              "PreResNet with BatchNorm vs GroupNorm (25 and 50 epochs) (chapter 6)",
                      tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


# The ViT of chapter 6 (droplab.transformer): 4 pre-LN blocks of width 64 on 7x7 patches, AdamW.
# On 1000 training images for 60 epochs at lr 2e-3 it fits them (99 %) and generalizes worse
# (72 % on validation), the regime in which a regularizer can help, like EVIDENCE for the ResNets.
def _vit_spec(base: RunSpec, depth: int, width: int, **recipe: Any) -> RunSpec:
    return replace(base, net=replace(base.net, depth=depth, width=width),
                   recipe=replace(base.recipe, optimizer="adamw", weight_decay=0.05, **recipe))


VIT_SMOKE = _vit_spec(SMOKE, 2, 16, lr=1e-3)
VIT_EVIDENCE = _vit_spec(EVIDENCE, 4, 64, epochs=60, eval_every=60, lr=2e-3, warmup_epochs=2.0)
VIT_PAPER = _vit_spec(PAPER, 6, 192, lr=1e-3, epochs=100, eval_every=100)


def _vit() -> Experiment:
    """Dropout at T0-T4 of a small pre-LN ViT (chapter 6), each against no dropout."""
    vit = {"arch": "vit", "norm": "layer"}
    configs = [Config("none", net=vit)] + [Config(t, net={**vit, "dropout_at": t}) for t in TRANSFORMER_POSITION_NAMES]
    return Experiment("vit", "dropout at T0-T4 of a pre-LN vision transformer on 7x7 patches (chapter 6)",
                      tuple(configs), {"smoke": VIT_SMOKE, "class": VIT_EVIDENCE, "paper": VIT_PAPER})


# Early dropout (Liu et al. 2023): P6 on for the first k of the 25 epochs, then off; k is chosen
# on validation. In EVIDENCE the no-dropout net overfits; the underfitting regime is the same net
# at width 8 with augmentation, which the `regime` pilot found fitting 81 % of its training images.
EARLY_EPOCHS: tuple[int, ...] = (5, 10, 15)


def _early() -> Experiment:
    """Standard dropout, early dropout (on for the first k epochs) and none at P6, in the
    overfitting regime and in an underfitting one (chapter 6)."""
    configs = []
    for regime, net, recipe in (("", {}, {}), ("underfit-", {"width": 8}, {"augment": True})):
        base = f"{regime}none"
        configs += [Config(base, base, net=net, recipe=recipe),
                    Config(f"{regime}P6", base, net=_at("P6", **net), recipe=recipe)]
        configs += [Config(f"{regime}P6-early{k}", base, net=_at("P6", **net), recipe={**recipe, "dropout_epochs": k})
                    for k in EARLY_EPOCHS]
    return Experiment("early", f"early dropout: P6 on for the first {', '.join(map(str, EARLY_EPOCHS))} "
                               f"epochs only, vs all the way and none, overfitting and underfitting (chapter 6)",
                      tuple(configs), {"smoke": SMOKE, "class": EVIDENCE, "paper": PAPER})


# ----------------------------------------------------------------------------
# The second class regime: a positive control first, then the placement study
# ----------------------------------------------------------------------------

# Where a regularizer can help: weight decay at Kim et al.'s 1e-4 (not 5e-4, itself a strong
# regularizer), trained long enough to overfit. Every network has the head's 1x1 Conv-BN-ReLU, so
# that one no-dropout baseline serves the residual (P) and the head (H) positions. Each seed draws
# its own training and validation images; the validation split is 10,000 held-out training images
# and the test split is all 10,000 test images (none for the pilot and the tuning runs, which
# choose on validation only).
LONG = Recipe(epochs=100, batch_size=64, lr=0.1, warmup_epochs=1.0, weight_decay=1e-4, augment=False,
              eval_every=100)
CONTROL_SMOKE = _base(8, 8, replace(LONG, epochs=2, eval_every=2), 256, 0, 256, head_conv=True)
CONTROL_CLASS = _base(8, 16, LONG, 1000, 0, 10_000, head_conv=True)
CONTROL_PAPER = _base(20, 16, replace(LONG, batch_size=128), 5000, 0, 10_000, head_conv=True)
NOISY: dict[str, Any] = {"label_noise": 0.3}
REGIMES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "long": ({}, {}),                                   # 100 epochs, clean labels
    "noisy": ({"epochs": PerScale(2, 60, 60), "eval_every": PerScale(2, 60, 60)}, NOISY),  # 60 epochs, 30 % wrong labels
}


def _control() -> Experiment:
    """The positive control (on validation only): in each candidate regime, does any regularizer
    (augmentation, P6 at p = 0.1 or 0.3) beat the network without one?"""
    configs = []
    for regime, (recipe, data) in REGIMES.items():
        base = f"{regime}-none"
        configs += [Config(base, base, recipe=recipe, data=data),
                    Config(f"{regime}-augment", base, recipe={**recipe, "augment": True}, data=data)]
        configs += [Config(f"{regime}-P6-p{p:g}", base, net=_at("P6", p=p), recipe=recipe, data=data)
                    for p in (0.1, 0.3)]
    return Experiment("control", "positive control on validation: augmentation and P6 (p = 0.1, 0.3) against "
                                 "no regularizer, 100 epochs with clean labels and 60 epochs with 30 % wrong ones",
                      tuple(configs), {"smoke": CONTROL_SMOKE, "class": CONTROL_CLASS, "paper": CONTROL_PAPER},
                      first_seed=200, split_per_seed=True)


# The placement study runs in the regime where the pilot found dropout itself (P6, not only
# augmentation) beating no regularizer on validation: 30 % of the training labels wrong, 60 epochs.
def _placement_sizes(test_size: int | None) -> dict[str, RunSpec]:
    recipe, data = REGIMES["noisy"]
    return {sc: base.with_overrides({"recipe": recipe, "data": {**data, "test_size": test_size}}, sc)
            for sc, base in (("smoke", CONTROL_SMOKE), ("class", CONTROL_CLASS), ("paper", CONTROL_PAPER))}


PLACEMENT_POSITIONS: tuple[str, ...] = ("P0", "P2", "P4", "P6", "P7", "H4", "H5")
# 0.7 was added after the first four rates put P2's and P6's best rate at the grid's top, 0.5.
PLACEMENT_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7)


def _placement_tuning() -> Experiment:
    """Each placement position at each rate of ``PLACEMENT_GRID``, scored on validation only, by
    networks (seeds 100, 101, ...) that never test: the rates the placement study uses."""
    configs = [Config("none")] + [Config(f"{pos}-p{p:g}", net=_at(pos, p=p))
                                  for pos in PLACEMENT_POSITIONS for p in PLACEMENT_GRID]
    return Experiment("placement-p", f"drop probability {', '.join(f'{p:g}' for p in PLACEMENT_GRID)} at "
                                     f"{', '.join(PLACEMENT_POSITIONS)} in the noisy-label regime, chosen on "
                                     f"validation by seeds the test never uses (chapters 3-4)",
                      tuple(configs), _placement_sizes(0), first_seed=100, split_per_seed=True)


# The rate of each position in the placement study: the best mean validation accuracy of the
# `placement-p` runs (``compare.tuned_p``; chapter 3 checks these against the records).
PLACEMENT_P: dict[str, float] = {"P0": 0.3, "P2": 0.5, "P4": 0.1, "P6": 0.5, "P7": 0.1, "H4": 0.3, "H5": 0.2}

# The positions the placement study trains: those its primary contrasts compare.
STUDY_POSITIONS: tuple[str, ...] = ("P0", "P2", "P4", "P6", "H4", "H5")

PRIMARY: tuple[Contrast, ...] = (
    Contrast("P6", "none", "Guideline 1: dropout after the last BN-ReLU of the branch helps"),
    Contrast("P6", "P0", "Guideline 1: P6 beats dropout on the block input"),
    Contrast("P6", "P2", "Guideline 1: P6 beats dropout before a BN (after the first BN)"),
    Contrast("P6", "P4", "Guideline 1: P6 beats dropout right before the second BN"),
    Contrast("H4", "H5", "Guideline 2: dropout before global average pooling beats dropout after it"),
)


def _placement() -> Experiment:
    """The placement study (chapters 3-4): no dropout and each position of the primary contrasts at
    its rate chosen on validation, ten seeds each drawing its own images, the whole test split;
    Guideline 1's ranking and Guideline 2 declared as the primary contrasts. (P7 was tuned too, but
    the study trains only the positions its contrasts compare.)"""
    configs = [Config("none")] + [Config(pos, net=_at(pos, p=PLACEMENT_P[pos])) for pos in STUDY_POSITIONS]
    return Experiment("placement", f"none, {', '.join(STUDY_POSITIONS)} (each at its rate chosen on validation) "
                                   "in the noisy-label regime; primary contrasts declared (chapters 3-4)",
                      tuple(configs), _placement_sizes(None), split_per_seed=True, primary=PRIMARY)


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    _residual("residual", 20), _residual("residual-56", 56), _head(),
    _tuning("residual-p", ("P0", "P2", "P4", "P6", "P7", "P7path"), head=False),
    _tuning("head-p", ("H4", "H5"), head=True,
            extra=[Config(n, net=_at(n[:2], p=p, head_conv=True)) for n, p in NOISE_MATCHED.items()]),
    _regime(), _precision(), _norm(), _vit(), _early(), _control(), _placement_tuning(), _placement())}

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


def spec(experiment: str | Experiment, config: str | Config, scale: str, dataset: str | None = None,
         seed: int | None = None) -> RunSpec:
    """The spec of one run: the experiment's base at ``scale``, the data set's channels, classes
    and augmentation, then the config's overrides. An experiment whose seeds draw their own
    images (``split_per_seed``) needs the run's ``seed``. A record whose stored spec differs from
    this one is stale (:meth:`RunSpec.stale_fields`)."""
    from droplab import data

    exp = get(experiment)
    cfg = config if isinstance(config, Config) else exp.config(config)
    sc = _scale.validate(scale)
    ds = dataset or exp.dataset
    if exp.split_per_seed and seed is None:
        raise ValueError(f"the runs of {exp.name!r} draw their images by seed: spec(...) needs the seed")
    info = data.info(ds)
    base = exp.base[sc]
    run = replace(base, net=replace(base.net, in_channels=info.shape[0], num_classes=info.num_classes),
                  recipe=replace(base.recipe, **AUGMENT.get(ds, {})),
                  data=replace(base.data, dataset=ds, split_seed=seed if exp.split_per_seed else SPLIT_SEED))
    return run.with_overrides(cfg.overrides, sc)


def build_model(experiment: str | Experiment, config: str | Config, scale: str, dataset: str | None = None):
    """The network of ``config`` at ``scale`` (``networks.build`` of its spec), untrained."""
    from droplab import networks

    return networks.build(spec(experiment, config, scale, dataset, seed=get(experiment).first_seed).net)


@dataclass
class Trained:
    """One trained run, in memory: the network, its :class:`droplab.train.History`, the
    training, validation and test images it used and the :class:`RunSpec` that decided it."""

    model: Any
    history: Any
    train: Any
    val: Any
    test: Any
    spec: RunSpec
    scale: str
    dataset: str
    train_seconds: float


def train_one(experiment: str | Experiment, config: str | Config, seed: int, *, scale: str | None = None,
              dataset: str | None = None, device: str | None = None, path: dict[str, Any] | None = None
              ) -> Trained:
    """Train one (config, seed) exactly as its record is made, and return it (:class:`Trained`):
    a chapter that probes a trained network of an experiment trains it from the registry's spec,
    never from a copy of it. ``path`` (a record's ``fast_path``: ``precision``,
    ``channels_last``) makes the run use that precision and memory format whatever the recipe's
    ``auto`` would choose on this machine; the spec stays the registry's."""
    from droplab import data, networks, repro, train

    exp = get(experiment)
    cfg = config if isinstance(config, Config) else exp.config(config)
    sc = _scale.warn_if_slow(_scale.validate(scale or _scale.current()))
    ds = dataset or exp.dataset
    run = spec(exp, cfg, sc, ds, seed=seed)
    tr, va, te = data.splits(run.data)
    dev = repro.device(device)
    repro.seed_everything(seed)
    model = networks.build(run.net)
    recipe = run.recipe if path is None else replace(run.recipe, precision=path["precision"],
                                                     channels_last=path["channels_last"])
    t0 = time.perf_counter()
    hist = train.fit(model, tr, None, recipe, seed=seed, device=dev, progress=False, deterministic=sc != "paper")
    return Trained(model, hist, tr, va, te, run, sc, ds, time.perf_counter() - t0)


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


def seed_list(experiment: str | Experiment, seeds: int | Iterable[int]) -> list[int]:
    """A count of seeds (the experiment's first ``seeds`` seeds) or the seeds themselves, sorted."""
    exp = get(experiment)
    if isinstance(seeds, int):
        return exp.seeds(seeds)
    return sorted({int(s) for s in seeds})


def configs_named(experiment: str | Experiment, only: Sequence[str] | None) -> list[str]:
    """``only`` without repeats (or every config), each checked against the registry."""
    exp = get(experiment)
    if only is None:
        return exp.config_names
    names = list(dict.fromkeys(only))
    if not names:
        raise ValueError(f"no config named; valid configs of {exp.name!r} are {', '.join(exp.config_names)}")
    for name in names:
        exp.config(name)  # raises on an unknown name
    return names


def plan(experiment: str | Experiment, seeds: int | Iterable[int] = 1, only: Sequence[str] | None = None,
         shard: str | tuple[int, int] | None = None) -> list[Run]:
    """The runs of a sweep, in order; ``shard=(i, n)`` keeps those at positions i, i+n, i+2n, ..."""
    exp = get(experiment)
    names = configs_named(exp, only)
    runs = sorted(Run(s, exp.config_names.index(c), c) for s in seed_list(exp, seeds) for c in names)
    i, n = shard if isinstance(shard, tuple) else parse_shard(shard)
    return runs[i::n]
