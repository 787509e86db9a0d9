"""A small pre-LN vision transformer with every dropout position by name (chapter 6).

Chapter 6 asks where dropout belongs when the normalization is LayerNorm,
which uses each sample's own statistics at inference too, in the network most
readers meet it in: the transformer (Dosovitskiy et al. 2021, ViT). The model
is sized for Fashion-MNIST on a CPU: 7x7 patches (16 tokens of a 28x28 image),
a learned position embedding, ``depth`` pre-LN blocks of width ``dim``, a final
LayerNorm, the mean over the tokens and one linear layer.

Each block is two :class:`droplab.blocks.ResidualBlock` (``x + branch(x)``), the
branches ``nn.Sequential`` in execution order like PreResNet's, filled from the
layouts "attention" and "mlp" of :mod:`droplab.blocks`, so
``print(model.blocks[0])`` shows where dropout sits::

    attention branch:  LN -> SelfAttention(qkv, scores -> [Softmax T1] -> @V) -> Linear -> T2
    MLP branch:        LN -> Linear -> GELU -> T3 -> Linear -> T4

and T0 is once, on the embeddings (patches plus positions) before the first
block. :data:`~droplab.blocks.TRANSFORMER_POSITIONS` says where each is and which P-position of
a PreResNet branch it corresponds to; ``dropout_at`` puts ``nn.Dropout(p)`` at
one of them (in every block for T1-T4). ViT itself uses T0, T2, T3 and T4 with
one rate and T1 with another (0 for its ImageNet models).

The attention is written out, ``softmax(Q K^T / sqrt(d_head)) V``, instead of
``F.scaled_dot_product_attention``: its ``dropout_p`` drops the probabilities
inside the kernel, where no named layer exists to find, switch or swap, so T1
could not be a dropout layer like every other position.

Choices: mean pooling rather than a class token (Beyer et al. 2022, "Better
plain ViT baselines", find it as good; it also makes the head GAP -> FC like
the ResNets'); MLP ratio 2 and head width 16 (``heads = dim // 16``) to train in
seconds on a CPU; weights truncated-normal with std 0.02, biases 0 (the usual
ViT init). ``networks.build(NetConfig(arch="vit", norm="layer", depth=..., width=...))``
builds one (:mod:`droplab.networks`).
"""

from __future__ import annotations

import torch
from torch import nn

from droplab import blocks
from droplab.blocks import ATTEND, TRANSFORMER_POSITION_NAMES, ResidualBlock, check_position, fill, with_dropout
from droplab.dropout import check_p

# The table of droplab.blocks that chapter 6 reads from here (the registry reads TRANSFORMER_POSITION_NAMES).
TRANSFORMER_POSITIONS = blocks.TRANSFORMER_POSITIONS
_ATTENTION, _MLP = blocks.layout("attention"), blocks.layout("mlp")
HEAD_DIM = 16  # width of one attention head when ``heads`` is not given


class PatchEmbedding(nn.Module):
    """Cut the image into ``patch`` x ``patch`` squares, map each linearly to ``dim`` (a strided
    conv), add a learned position embedding: (N, C, H, W) -> (N, tokens, dim)."""

    def __init__(self, in_channels: int, dim: int, image_size: int, patch: int):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"the image size {image_size} is not a multiple of the patch size {patch}; "
                             f"choose a patch that divides it (7 or 14 for 28x28, 4 or 8 for 32x32)")
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.position


class SelfAttention(nn.Module):
    """Multi-head self-attention up to the output projection (the next layer of the branch):
    ``qkv`` -> scores ``Q K^T / sqrt(d_head)`` -> ``attend`` (Softmax, then dropout at T1) -> ``@ V``
    -> heads concatenated. ``attend`` is an ``nn.Sequential``, so T1 prints and switches like any slot."""

    def __init__(self, dim: int, heads: int, at: str | None = None, p: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the width {dim} does not split into {heads} heads; choose a width divisible by it")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attend = with_dropout(fill(ATTEND, nn.Softmax(dim=-1)), at, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        probs = self.attend(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5)   # (N, heads, T, T)
        return (probs @ v).transpose(1, 2).reshape(n, t, d)

    def extra_repr(self) -> str:
        return f"heads={self.heads}"


class TransformerBlock(nn.Module):
    """One pre-LN block, two residual blocks in a row (Dosovitskiy et al. 2021, Eqs. 2-3)::

        x = x + attention.branch(x)    # LN SelfAttention Linear [T2], T1 inside SelfAttention
        x = x + mlp.branch(x)          # LN Linear GELU [T3] Linear [T4]
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, at: str | None = None, p: float = 0.1):
        super().__init__()
        self.attention = ResidualBlock(with_dropout(fill(
            _ATTENTION.slots, nn.LayerNorm(dim), SelfAttention(dim, heads, at, p), nn.Linear(dim, dim)), at, p))
        self.mlp = ResidualBlock(with_dropout(fill(
            _MLP.slots, nn.LayerNorm(dim), nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)),
            at, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attention(x))


class TokenMean(nn.Module):
    """The mean over the tokens, (N, T, D) -> (N, D): a ViT's global average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class ViT(nn.Module):
    """A pre-LN vision transformer for 28x28 (or 32x32) images, dropout at T0-T4 by name (chapter 6).

    ``features`` = patch embedding, [T0], ``depth`` :class:`TransformerBlock`, final LayerNorm;
    ``head`` = mean over tokens, Linear (``features -> head`` as in the ResNets). ``dropout_at`` (T0-T4,
    :data:`~droplab.blocks.TRANSFORMER_POSITIONS`) puts
    ``nn.Dropout(p)`` there (T1-T4 in every block); ``heads`` defaults to ``dim // 16``.
    """

    def __init__(self, depth: int = 4, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 patch: int = 7, dim: int = 64, heads: int | None = None, mlp_ratio: int = 2,
                 dropout_at: str | None = None, p: float = 0.1):
        super().__init__()
        check_position(dropout_at, TRANSFORMER_POSITION_NAMES, "a ViT")
        p = float(check_p(p))
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth is the number of transformer blocks and must be a positive int; got {depth!r}")
        heads = heads or max(1, dim // HEAD_DIM)
        self.depth, self.dim, self.heads, self.dropout_at, self.p = depth, dim, heads, dropout_at, p
        self.features = nn.Sequential(
            # T0, on the embeddings: the input of the first block's attention branch, once
            with_dropout([PatchEmbedding(in_channels, dim, image_size, patch), _ATTENTION.block_input], dropout_at, p),
            *[TransformerBlock(dim, heads, mlp_ratio, dropout_at, p) for _ in range(depth)],
            nn.LayerNorm(dim),
        )
        self.head = nn.Sequential(TokenMean(), nn.Linear(dim, num_classes))
        for name, param in self.named_parameters():
            if param.dim() > 1 or name.endswith("position"):
                nn.init.trunc_normal_(param, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def blocks(self) -> list[TransformerBlock]:
        """The transformer blocks, in order."""
        return [m for m in self.features if isinstance(m, TransformerBlock)]
