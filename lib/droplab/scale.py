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
"""

from __future__ import annotations

import os
import sys
from typing import TypeVar

SCALES: tuple[str, ...] = ("smoke", "class", "paper")
ENV_VAR = "DROPLAB_SCALE"

T = TypeVar("T")


class ScaleError(ValueError):
    """An unknown scale name."""


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
        return validate(value)
    return "smoke" if _under_test() else "class"


def pick(smoke: T, class_: T, paper: T, scale: str | None = None) -> T:
    """The value for the scale in force (or for ``scale``)::

        epochs = pick(smoke=1, class_=8, paper=60)
    """
    name = validate(scale) if scale is not None else current()
    return {"smoke": smoke, "class": class_, "paper": paper}[name]
