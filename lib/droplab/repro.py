"""Reproducibility: which device to run on, seeding everything, provenance records."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import re
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from droplab import scale


def device(prefer: str | None = None) -> torch.device:
    """The device to compute on: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` (or the environment variable ``DROPLAB_DEVICE``) forces one,
    e.g. ``"cpu"`` to compare with a GPU run.
    """
    prefer = prefer or os.environ.get("DROPLAB_DEVICE")
    if prefer:
        dev = torch.device(prefer)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} was asked for, but torch sees no CUDA GPU here; use 'cpu'.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices) and set the cuDNN flags.

    With ``deterministic`` cuDNN picks deterministic kernels and no autotuning,
    so a run repeats on the same machine; without it cuDNN may benchmark and
    pick the fastest kernels (``paper`` scale sweeps do that). Returns a torch
    generator seeded with ``seed`` for code that wants its own stream.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def git_commit(repo: str | Path | None = None) -> str | None:
    """The commit of the checkout (with ``+dirty`` if it has changes), or None outside git.

    ``DROPLAB_GIT_COMMIT`` names it where the code runs from a copy without
    ``.git`` (the GPU check sets it from the commit the copy was packed at)."""
    if os.environ.get("DROPLAB_GIT_COMMIT"):
        return os.environ["DROPLAB_GIT_COMMIT"]
    cwd = Path(repo) if repo else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def device_name(dev: torch.device | None = None) -> str:
    """A readable name of the device: the GPU model, or the CPU and its core count."""
    dev = dev or device()
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple MPS"
    return f"{cpu_model()} CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def banner(dev: torch.device | None = None) -> str:
    """The line every chapter prints under its imports: the scale in force, the device, torch's version."""
    return f"scale: {scale.current()}   device: {device_name(dev)}   torch {torch.__version__}"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(dev: torch.device | None = None) -> dict[str, Any]:
    """Where and how a result was computed: commit, versions, device, date (UTC)."""
    dev = dev or device()
    return {
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(dev),
        "device_name": device_name(dev),
        # the vector instructions torch's CPU kernels use (AVX2, AVX512, ...): two CPUs that
        # share a name but not this sum in another order
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def repository_url(config: str | Path | None = None) -> str:
    """The book's repository, as the one place that names it says: ``repository: url:`` in
    ``_config.yml`` (the launch buttons read it there too).

    ``config`` is the file; by default the ``_config.yml`` of the checkout this package is
    installed from (editable install), else of the working directory or a folder above it.
    Chapters opened on their own, without a checkout (Colab), take the same url from the
    environment variable ``DROPLAB_REPOSITORY`` instead (see README).
    """
    if config is None:
        here = Path.cwd().resolve()
        candidates = [Path(__file__).resolve().parents[2], here, *here.parents]
        config = next((d / "_config.yml" for d in candidates if (d / "_config.yml").is_file()), None)
        if config is None:
            raise FileNotFoundError(
                "no _config.yml of the book found next to droplab or above the working directory; "
                "pass its path: repository_url('path/to/_config.yml')")
    block = None
    for line in Path(config).read_text().splitlines():
        if line and not line[0].isspace():  # a top-level key starts or ends a block
            block = line.split(":", 1)[0].strip()
        elif block == "repository" and line.strip().startswith("url:"):
            url = line.split(":", 1)[1].split(" #", 1)[0].strip().strip("'\"")
            if url:
                return url
    raise ValueError(f"{config} names no repository: add `repository:` with `url: https://github.com/OWNER/NAME`")


class ChapterTimings(NamedTuple):
    """The measured running times of the chapters (README's table, written by
    ``scripts/time_chapters.py``): seconds per chapter and scale (None where not measured), and
    the machine they were measured on (the table's "Measured on:" line)."""

    seconds: dict[str, dict[str, float | None]]
    measured_on: str


TIMINGS_START, TIMINGS_END = "<!-- chapter-timings -->", "<!-- /chapter-timings -->"


def _seconds(cell: str) -> float | None:
    """``"8 s"``, ``"2.4 min"`` or ``"–"`` (not measured) as seconds."""
    match = re.fullmatch(r"([0-9.]+) (s|min)", cell.strip())
    if match is None:
        if cell.strip() in ("–", "-", ""):
            return None
        raise ValueError(f"a chapter time must read like '8 s', '2.4 min' or '–'; got {cell!r}")
    return float(match[1]) * (60.0 if match[2] == "min" else 1.0)


def chapter_timings(readme: str | Path | None = None) -> ChapterTimings:
    """The chapter timings table between the ``chapter-timings`` markers of ``readme`` (by default
    the README.md beside the book's ``_config.yml``, found as :func:`repository_url` finds it):
    for each chapter its seconds at each scale the table has columns for (smoke, class)."""
    if readme is None:
        readme = Path(__file__).resolve().parents[2] / "README.md"   # the checkout droplab is installed from
        if not readme.is_file():
            here = Path.cwd().resolve()
            readme = next((d / "README.md" for d in (here, *here.parents) if (d / "_config.yml").is_file()), readme)
    text = Path(readme).read_text()
    if TIMINGS_START not in text or TIMINGS_END not in text:
        raise ValueError(f"{readme} has no chapter timings between {TIMINGS_START} and {TIMINGS_END}: "
                         f"run `python scripts/time_chapters.py`")
    block = text.split(TIMINGS_START, 1)[1].split(TIMINGS_END, 1)[0]
    lines = [line.strip() for line in block.strip().splitlines()]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    scales = header[1:]
    seconds = {}
    for line in lines[2:]:
        match = re.fullmatch(r"\| `([^`]+)` \|(.*)\|", line)
        if match:
            cells = [c.strip() for c in match[2].split("|")]
            seconds[match[1]] = {s: _seconds(c) for s, c in zip(scales, cells)}
    measured = next((line.removeprefix("Measured on:").strip().rstrip(".") for line in lines
                     if line.startswith("Measured on:")), "")
    if not seconds or not measured:
        raise ValueError(f"the chapter timings of {readme} need one row per chapter and a 'Measured on:' line")
    return ChapterTimings(seconds, measured)
