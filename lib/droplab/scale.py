"""The three run scales of the book: ``smoke``, ``class`` and ``paper``.

One environment variable, ``DROPLAB_SCALE``, chooses the scale. Only sizes
change between scales; the code path is the same.

=========  ==========================================  ==========================
scale      for                                         budget per chapter
=========  ==========================================  ==========================
smoke      tests and CI (forced under pytest or CI)    under 60 s on a 2-core CPU
class      the default: a student's laptop, no GPU     under 5 min on a 2-core CPU
paper      one GPU; the sweeps behind the tables       minutes on one GPU
=========  ==========================================  ==========================

Choosing ``paper`` where torch sees no CUDA GPU warns once
(:class:`SlowScaleWarning`, with an estimate of the time): on a CPU it trains
for hours.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TypeVar

SCALES: tuple[str, ...] = ("smoke", "class", "paper")
ENV_VAR = "DROPLAB_SCALE"

T = TypeVar("T")


class ScaleError(ValueError):
    """An unknown scale name."""


class SlowScaleWarning(UserWarning):
    """The paper scale was chosen on a machine without a CUDA GPU."""


# One paper-scale training run (PreResNet-20, width 16, the 55,000 Fashion-MNIST training
# images, 20 epochs: 1.1 million images) on a 2-core CPU: README's "Training speed on a CPU"
# measures about 570 images/s for PreResNet-8, and PreResNet-20 has three times its blocks,
# so about 190 images/s, or 1.6 hours per run.
PAPER_RUN_CPU_HOURS = 1.6
_warned_slow = False


def _under_test() -> bool:
    return bool(os.environ.get("CI")) or "PYTEST_CURRENT_TEST" in os.environ or "pytest" in sys.modules


def validate(name: str) -> str:
    """Return ``name`` if it is a scale, else raise an error that lists the valid ones."""
    if name not in SCALES:
        raise ScaleError(
            f"unknown scale {name!r} (from {ENV_VAR} or an argument); "
            f"valid scales are {', '.join(SCALES)}. "
            f"Example: {ENV_VAR}=class jupyter lab"
        )
    return name


def current() -> str:
    """The scale in force.

    ``DROPLAB_SCALE`` if it is set (and valid); otherwise ``smoke`` when the
    code runs under pytest or with ``CI`` set, and ``class`` everywhere else.
    """
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        return warn_if_slow(validate(value))
    return "smoke" if _under_test() else "class"


def warn_if_slow(name: str) -> str:
    """Return ``name``; if it is ``paper`` and torch sees no CUDA GPU, warn (once per process)
    how long the CPU will need, before anything starts training."""
    global _warned_slow
    if name != "paper" or _warned_slow:
        return name
    import torch  # here, not at the top: the scale is read before anything else needs torch

    if not torch.cuda.is_available():
        _warned_slow = True
        warnings.warn(
            f"{ENV_VAR}=paper, but torch sees no CUDA GPU: everything will train on the CPU. "
            f"One paper-scale training run takes about {PAPER_RUN_CPU_HOURS:.1f} hours on a 2-core CPU "
            "(minutes on one GPU), and a chapter or a sweep trains many runs: expect hours to days. "
            f"On this machine use {ENV_VAR}=class (the default), or run the paper scale on a GPU.",
            SlowScaleWarning,
            stacklevel=3,
        )
    return name


def pick(smoke: T, class_: T, paper: T, scale: str | None = None) -> T:
    """The value for the scale in force (or for ``scale``)::

        epochs = pick(smoke=1, class_=8, paper=60)
    """
    name = validate(scale) if scale is not None else current()
    return {"smoke": smoke, "class": class_, "paper": paper}[name]
