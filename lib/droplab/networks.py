"""One network from one config, whatever its architecture (chapters 3-6).

:class:`NetConfig` is the network part of a run (nanoGPT-style, everything
:func:`build` needs); :func:`build` turns it into a :class:`droplab.models.PreResNet`,
a :class:`droplab.models.ResNetV1` or a :class:`droplab.transformer.ViT`. This is
the one place that knows every architecture: the convolutional networks and the
transformer are built side by side from :mod:`droplab.blocks` and know nothing of
each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from droplab.models import PreResNet, ResNetV1
from droplab.transformer import ViT

ARCHS: tuple[str, ...] = ("preresnet", "resnetv1", "vit")


@dataclass(frozen=True)
class NetConfig:
    """One network of chapters 3-6: everything :func:`build` needs.

    ``arch`` "preresnet" (``block`` "basic" or "bottleneck") or "resnetv1";
    ``depth`` 6n+2 (basic) or 9n+2 (bottleneck); stage widths ``width, 2 width,
    4 width``; ``dropout_at`` P0-P7 in every block and ``head_dropout_at`` H1-H7
    in the head (Kim et al. Figures 2 and 4), with drop probabilities ``p`` and
    ``head_p`` (None: ``p``); ``head_conv`` adds the head's 1x1 Conv-BN-ReLU;
    ``norm`` "batch", "group" or "layer" (PreResNet, chapter 6). ``arch="vit"``
    (:class:`droplab.transformer.ViT`, ``norm="layer"``): ``depth`` blocks of width ``width``, T0-T4.
    """

    arch: str = "preresnet"
    block: str = "basic"
    depth: int = 20
    width: int = 16
    dropout_at: str | None = None
    p: float = 0.1
    head_dropout_at: str | None = None
    head_p: float | None = None
    head_conv: bool = False
    in_channels: int = 1
    num_classes: int = 10
    norm: str = "batch"


def build(cfg: NetConfig) -> nn.Module:
    """The network ``cfg`` describes (a :class:`~droplab.models.PreResNet`, :class:`~droplab.models.ResNetV1`
    or :class:`~droplab.transformer.ViT`)."""
    if cfg.arch == "vit":
        return _vit(cfg)
    common = {"num_classes": cfg.num_classes, "in_channels": cfg.in_channels, "width": cfg.width,
              "dropout_at": cfg.dropout_at, "head_dropout_at": cfg.head_dropout_at, "p": cfg.p,
              "head_p": cfg.head_p, "head_conv": cfg.head_conv}
    if cfg.arch == "resnetv1":
        if cfg.block != "basic" or cfg.norm != "batch":
            raise ValueError(f"a ResNetV1 has basic blocks and BN only, got block={cfg.block!r}, norm={cfg.norm!r}")
        return ResNetV1(cfg.depth, **common)
    if cfg.arch == "preresnet":
        return PreResNet(cfg.depth, block=cfg.block, norm=cfg.norm, **common)
    raise ValueError(f"unknown arch {cfg.arch!r}; valid archs are {', '.join(ARCHS)}")


def _vit(cfg: NetConfig) -> ViT:
    """The ViT of a config with ``arch="vit"``: ``depth`` blocks of width ``width``, ``dropout_at``
    T0-T4 with ``p``. A ViT normalizes with LayerNorm, so the config must say ``norm="layer"``
    (a record then states it); it has no H1-H7 head and no block type."""
    if cfg.norm != "layer":
        raise ValueError(f"a ViT normalizes with LayerNorm: build it with norm='layer' (got norm={cfg.norm!r})")
    if cfg.head_dropout_at is not None or cfg.head_conv:
        raise ValueError("a ViT's head is mean pooling and one linear layer: head_dropout_at and head_conv "
                         "do not apply (put dropout at T0-T4 with dropout_at)")
    return ViT(cfg.depth, num_classes=cfg.num_classes, in_channels=cfg.in_channels, dim=cfg.width,
               dropout_at=cfg.dropout_at, p=cfg.p)
