"""One look for every figure of the book.

- :func:`style` (a context manager) and :func:`apply_style` set the book's
  matplotlib style; importing this module changes nothing.
- :func:`figure` makes a styled ``(fig, ax)`` with a title that states the
  finding and labelled axes.
- :func:`measured_vs_analytic`: the analytic curve as a line, the measurement
  as markers beside it (with optional error bars).
- :func:`bars_with_ci`: bars with 95% CI error bars and an optional baseline.
- :func:`forest`: comparisons with their intervals and verdicts, one row each, beside
  the differences a paper reports (the book's verdict figures).
- :func:`position_diagram`: the PreResNet block with P0-P7, the head with
  H1-H7 (Kim et al. Figures 2 and 4), the bottleneck / ResNetV1 blocks and the
  transformer's halves (T0-T4), each drawn from its layout in :mod:`droplab.blocks`.

The Agg backend is chosen only when no backend was set and there is no display
(and only when a figure is made, never at import).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from droplab import blocks

STYLE: dict[str, Any] = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "legend.frameon": False,
    "legend.fontsize": 9,
    "lines.linewidth": 1.8,
    "lines.markersize": 6,
    "axes.prop_cycle": None,  # filled in lazily (needs matplotlib's cycler)
}

# colour-blind-safe palette (Okabe & Ito)
PALETTE: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
HIGHLIGHT = "#D55E00"
BOX_COLOURS = {"bn": "#DCEBF7", "act": "#E3F2E1", "weight": "#FDEBD3", "other": "#EEEEEE"}


def _ensure_backend() -> None:
    """Use Agg when no backend was chosen (no MPLBACKEND, no rc setting) and there is no display."""
    import matplotlib

    if os.environ.get("MPLBACKEND") or "matplotlib.pyplot" in sys.modules:
        return
    try:
        from matplotlib import rcsetup

        unset = dict.__getitem__(matplotlib.rcParams, "backend") is rcsetup._auto_backend_sentinel
    except (AttributeError, KeyError):  # older or newer matplotlib: let it decide
        return
    in_kernel = "ipykernel" in sys.modules
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")
    if unset and not in_kernel and not has_display:
        matplotlib.use("Agg")


def _rc() -> dict[str, Any]:
    from cycler import cycler

    rc = dict(STYLE)
    rc["axes.prop_cycle"] = cycler(color=list(PALETTE))
    return rc


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Context manager: the book's matplotlib style inside, the previous one after."""
    _ensure_backend()
    import matplotlib as mpl

    with mpl.rc_context(_rc()):
        yield


def apply_style() -> None:
    """Set the book's style globally (for a notebook's first cell)."""
    _ensure_backend()
    import matplotlib as mpl

    mpl.rcParams.update(_rc())


def figure(
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    figsize: tuple[float, float] | None = None,
    xscale: str | None = None,
    yscale: str | None = None,
    ax: Any = None,
) -> tuple[Any, Any]:
    """A styled figure and axes: ``title`` states the finding, axes carry labels (with units).

    Pass ``ax`` to style an existing axes (e.g. one panel of ``plt.subplots``).
    """
    _ensure_backend()
    import matplotlib.pyplot as plt

    with style():
        if ax is None:
            fig, ax = plt.subplots(figsize=figsize or STYLE["figure.figsize"])
        else:
            fig = ax.figure
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=STYLE["grid.alpha"])
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.set_prop_cycle(color=list(PALETTE))
        if xscale:
            ax.set_xscale(xscale)
        if yscale:
            ax.set_yscale(yscale)
    return fig, ax


def measured_vs_analytic(
    ax: Any,
    x: Sequence[float] | np.ndarray,
    measured: Sequence[float] | np.ndarray,
    analytic: Sequence[float] | np.ndarray | Callable[[np.ndarray], np.ndarray] | None,
    label: str = "",
    err: Sequence[float] | np.ndarray | None = None,
    color: str | None = None,
    marker: str = "o",
    dense: int = 200,
) -> Any:
    """Draw the analytic curve as a line and the measurement as markers of the same colour.

    ``analytic`` is values at ``x`` or a function of x (then drawn on a dense
    grid over the range of ``x``). ``err`` adds error bars (e.g. a 95% CI).
    Returns ``ax``.
    """
    x = np.asarray(x, dtype=float)
    measured = np.asarray(measured, dtype=float)
    if color is None:
        color = ax._get_lines.get_next_color()
    name = f"{label}: " if label else ""
    if analytic is not None:
        if callable(analytic):
            xs = np.linspace(x.min(), x.max(), dense)
            ys = np.asarray(analytic(xs), dtype=float)
        else:
            xs, ys = x, np.asarray(analytic, dtype=float)
        ax.plot(xs, ys, "-", color=color, label=f"{name}analytic", zorder=2)
    ax.errorbar(
        x, measured, yerr=None if err is None else np.asarray(err, dtype=float),
        fmt=marker, color=color, mfc="white", mew=1.5, capsize=3, linestyle="none",
        label=f"{name}measured", zorder=3,
    )
    ax.legend()
    return ax


def bars_with_ci(ax: Any, labels: Sequence[str], means: Sequence[float] | np.ndarray,
                 ci: Sequence[float] | np.ndarray | None, baseline: float | None = None,
                 baseline_label: str = "no dropout", highlight: Iterable[str] = (), color: str | None = None) -> Any:
    """Bars of ``means`` with ``ci`` half-widths as error bars; ``baseline`` as a dashed line.

    Bars named in ``highlight`` (e.g. the guideline's positions) get the
    highlight colour. Returns ``ax``.
    """
    means = np.asarray(means, dtype=float)
    if len(labels) != len(means):
        raise ValueError(f"{len(labels)} labels but {len(means)} means; give one label per bar")
    hl = set(highlight)
    base = color or PALETTE[0]
    colours = [HIGHLIGHT if lab in hl else base for lab in labels]
    pos = np.arange(len(labels))
    ax.bar(pos, means, yerr=None if ci is None else np.asarray(ci, dtype=float), color=colours,
           capsize=4, edgecolor="black", linewidth=0.5, zorder=2)
    ax.set_xticks(pos)
    ax.set_xticklabels(labels)
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1.2, label=baseline_label, zorder=3)
        ax.legend()
    return ax


def differences_with_ci(
    ax: Any,
    labels: Sequence[str],
    diffs: Sequence[float] | np.ndarray,
    ci: Sequence[float] | np.ndarray,
    quoted: dict[str, Sequence[float]] | None = None,
    quoted_label: str = "Kim et al. (quoted)",
    ours_label: str = "this book's records",
    highlight: Iterable[str] = (),
) -> Any:
    """Each config's difference from its baseline with its 95 % CI (dots and whiskers), beside
    the differences quoted from a paper (small open markers, one per quoted column), and
    the zero line: where a whisker crosses it, the seeds do not resolve the sign.

    ``labels``, ``diffs`` and ``ci`` are in the same order; ``quoted`` maps a label
    to its quoted differences (any number of columns; labels it lacks get none).
    Returns ``ax``.
    """
    diffs, ci = np.asarray(diffs, dtype=float), np.asarray(ci, dtype=float)
    if not len(labels) == len(diffs) == len(ci):
        raise ValueError(f"{len(labels)} labels, {len(diffs)} differences and {len(ci)} intervals; "
                         f"give one of each per config")
    pos = np.arange(len(labels))
    hl = set(highlight)
    ax.axhline(0.0, color="black", linewidth=1.0, zorder=1)
    colours = [HIGHLIGHT if lab in hl else PALETTE[0] for lab in labels]
    ax.errorbar(pos - 0.12, diffs, yerr=np.nan_to_num(ci), fmt="none", ecolor="black", capsize=4, zorder=2)
    ax.scatter(pos - 0.12, diffs, c=colours, s=40, zorder=3, label=ours_label, edgecolors="black")
    if quoted:
        xs, ys = [], []
        for i, lab in enumerate(labels):
            for v in quoted.get(lab, ()):
                xs.append(i + 0.12)
                ys.append(v)
        if xs:
            ax.scatter(xs, ys, marker="D", s=22, facecolors="none", edgecolors=PALETTE[2], zorder=3,
                       label=quoted_label)
    ax.set_xticks(pos)
    ax.set_xticklabels(labels)
    ax.legend()
    return ax


VERDICT_COLOURS = {"supports": PALETTE[2], "contradicts": PALETTE[1], "unresolved": "#777777"}


def forest(
    comparisons: Sequence[Any],
    title: str,
    *,
    ax: Any = None,
    scale: float = 100.0,
    unit: str = "points",
    quoted: dict[str, Sequence[float]] | None = None,
    quoted_label: str = "Kim et al. (quoted)",
    xlabel: str | None = None,
    legend_outside: bool = False,
) -> tuple[Any, Any]:
    """A forest plot of comparisons (:class:`droplab.compare.Comparison`): one row each, top
    down, the mean difference as a dot coloured by its verdict, its interval as a bar (the level
    each was drawn at is in the legend), the zero line, and the differences ``quoted`` from a
    paper (keyed by the comparison's name, e.g. ``"P6 − none"``) as open diamonds. ``scale`` turns fractions into
    ``unit`` (percent points by default); ``legend_outside`` puts the legend right of the plot, where it
    covers no row. Returns ``(fig, ax)``."""
    comparisons = list(comparisons)
    if not comparisons:
        raise ValueError("a forest plot needs at least one comparison")
    metric = getattr(comparisons[0], "metric", "")
    xlabel = xlabel or f"difference in {metric.replace('final_', '').replace('_', ' ')} ({unit})".replace(" ()", "")
    fig, ax = figure(title, xlabel, "", ax=ax,
                     figsize=(6.4, max(2.2, 0.42 * len(comparisons) + 1.3)))
    ys = np.arange(len(comparisons))[::-1]
    ax.axvline(0.0, color="black", linewidth=1.0, zorder=1)
    seen: set[str] = set()
    for y, c in zip(ys, comparisons):
        v = str(c.verdict)
        colour = VERDICT_COLOURS.get(v, PALETTE[0])
        if np.isfinite(c.low):
            ax.plot([scale * c.low, scale * c.high], [y, y], color=colour, linewidth=2.2, zorder=2)
        label = v if v not in seen else None
        seen.add(v)
        ax.scatter([scale * c.mean], [y], color=colour, edgecolors="black", s=42, zorder=3, label=label)
    if quoted:
        qx, qy = [], []
        for y, c in zip(ys, comparisons):
            for v in quoted.get(c.name, ()):
                qx.append(v)
                qy.append(y - 0.22)
        if qx:
            ax.scatter(qx, qy, marker="D", s=24, facecolors="none", edgecolors=PALETTE[0], zorder=3,
                       label=quoted_label)
    levels = sorted({round(100 * c.level, 2) for c in comparisons})
    ax.set_yticks(ys)
    ax.set_yticklabels([c.name for c in comparisons])
    ax.grid(True, axis="x", alpha=STYLE["grid.alpha"])
    ax.grid(False, axis="y")
    place = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if legend_outside else {"loc": "best"}
    ax.legend(title=f"interval: {', '.join(f'{lv:g} %' for lv in levels)}", **place)
    fig.tight_layout()
    return fig, ax


# --------------------------------------------------------------------------- position diagrams

#: The diagram kinds the chapters name, beside the layout names of :mod:`droplab.blocks`.
DIAGRAM_KINDS: dict[str, str] = {"preresnet": "preresnet-basic", "bottleneck": "preresnet-bottleneck"}
_BOX_COLOUR = {"norm": "bn", "act": "act", "weight": "weight"}   # any other kind of layer: "other"


def _boxes(lay: blocks.Layout) -> tuple[list[tuple[str, str]], list[str]]:
    """What :func:`position_diagram` draws for a layout: the boxes ``(label, colour key of
    BOX_COLOURS)`` in execution order, and the position names on the arrows: for a residual
    block first the block input (before the split), then one per arrow into, between and out
    of the boxes ("" for an arrow without a name)."""
    boxes: list[tuple[str, str]] = []
    names = [""]                                   # the arrow into the first box
    for e in blocks.flatten(lay.slots):
        if isinstance(e, str):
            names[-1] = e
        elif e.drawn:
            boxes.append((e.label, _BOX_COLOUR.get(e.kind, "other")))
            names.append("")
    return boxes, ([lay.block_input or ""] if lay.residual else []) + names


def position_diagram(
    kind: str = "preresnet",
    highlight: str | Iterable[str] | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """Draw a block (or the head) as boxes in execution order with the dropout positions on the arrows.

    ``kind``: a layout of :mod:`droplab.blocks` (:data:`droplab.blocks.LAYOUTS`), or as the
    chapters call them ``"preresnet"`` (P0-P7, Kim et al. Figure 2), ``"head"`` (H1-H7,
    Figure 4), ``"bottleneck"``, ``"resnetv1"``, or the two halves of a pre-LN transformer
    block, ``"attention"`` and ``"mlp"`` (T0-T4, chapter 6). Boxes and position names come
    from the layout, so the figure shows the slot list the networks are built from. Residual kinds draw the shortcut and the addition; P0 sits on the input
    before the split. ``highlight`` marks positions in the highlight colour (``"guideline"``
    marks Guideline 1 or 2). ``labels`` overrides the position names. Returns the figure.
    """
    valid = [*DIAGRAM_KINDS, *blocks.LAYOUTS]
    if kind not in valid:
        raise ValueError(f"kind must be one of {', '.join(map(repr, valid))}; got {kind!r}")
    _ensure_backend()
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    lay = blocks.layout(DIAGRAM_KINDS.get(kind, kind))
    boxes, default_names = _boxes(lay)
    names = list(labels) if labels is not None else default_names
    residual = lay.residual
    if len(names) != len(default_names):
        raise ValueError(f"{kind} has {len(default_names)} positions; got {len(names)} labels")
    if highlight == "guideline":
        if not lay.guideline:
            raise ValueError(f"no guideline covers a {kind!r} block; name the positions to highlight instead")
        hl = set(lay.guideline)
    elif isinstance(highlight, str):
        hl = {highlight}
    else:
        hl = set(highlight or ())

    step, bw, bh = 1.75, 1.15, 0.6
    x_in = 0.0
    x_split = 1.4 if residual else None
    x0 = (x_split if residual else x_in) + 0.8 + bw / 2  # centre of the first box
    centres = [x0 + i * step for i in range(len(boxes))]
    x_add = centres[-1] + step
    x_out = x_add + (1.0 if residual else 0.0)
    width = x_out + 0.8
    fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * width), 2.8 if residual else 2.0))
    ax.set_xlim(-0.6, width)
    ax.set_ylim(-0.9, 1.7 if residual else 0.9)
    ax.set_aspect("equal")
    ax.axis("off")

    def arrow(xa: float, ya: float, xb: float, yb: float) -> None:
        ax.add_patch(FancyArrowPatch((xa, ya), (xb, yb), arrowstyle="-|>", mutation_scale=12, lw=1.2, color="black"))

    def pos_label(name: str, x: float, y: float) -> None:
        if not name:
            return
        on = name in hl
        ax.text(
            x, y + 0.22, name, ha="center", va="bottom", fontsize=9, fontweight="bold" if on else "normal",
            color=HIGHLIGHT if on else "#333333",
            bbox={"boxstyle": "round,pad=0.15", "fc": "#FFF1E6" if on else "white", "ec": HIGHLIGHT if on else "none"},
        )
        ax.plot([x], [y], marker="o", ms=4, color=HIGHLIGHT if on else "#555555", zorder=4)

    for (name, kind_), xc in zip(boxes, centres):
        ax.add_patch(FancyBboxPatch((xc - bw / 2, -bh / 2), bw, bh, boxstyle="round,pad=0.03",
                                    fc=BOX_COLOURS[kind_], ec="black", lw=1.0))
        ax.text(xc, 0, name, ha="center", va="center", fontsize=9)

    ax.text(x_in - 0.3, 0, "x" if residual else "features", ha="right" if not residual else "center",
            va="center", fontsize=10, style="italic")
    k = 0
    if residual:
        arrow(x_in, 0, x_split, 0)
        pos_label(names[k], (x_in + x_split) / 2, 0)  # P0: before the split
        k += 1
        # shortcut: up, across, down into the addition
        ax.plot([x_split, x_split, x_add, x_add], [0, 1.1, 1.1, 0.25], color="black", lw=1.2)
        ax.text((x_split + x_add) / 2, 1.2, "shortcut (identity)", ha="center", va="bottom", fontsize=8, color="#555555")
        prev = x_split
    else:
        prev = x_in
    for xc in centres:
        arrow(prev, 0, xc - bw / 2, 0)
        pos_label(names[k], (prev + xc - bw / 2) / 2, 0)
        k += 1
        prev = xc + bw / 2
    if residual:
        arrow(prev, 0, x_add - 0.25, 0)
        pos_label(names[k], (prev + x_add - 0.25) / 2, 0)
        k += 1
        ax.add_patch(plt.Circle((x_add, 0), 0.25, fc="white", ec="black", lw=1.2))
        ax.text(x_add, 0, "+", ha="center", va="center", fontsize=12)
        arrow(x_add + 0.25, 0, x_out, 0)
        ax.text(x_out + 0.1, 0, "".join(f"{layer.label} → " for layer in lay.after_addition) + "out",
                ha="left", va="center", fontsize=9, style="italic")
    else:
        arrow(prev, 0, x_out, 0)
        pos_label(names[k], (prev + x_out) / 2, 0)
        ax.text(x_out + 0.1, 0, "ŷ", ha="left", va="center", fontsize=11)
    positions = [n for n in default_names if n]
    default_title = f"{lay.title}: dropout positions {positions[0]}–{positions[-1]}"
    ax.set_title(title or default_title, fontsize=11, fontweight="bold")
    return fig


def texts(fig_or_ax: Any) -> list[str]:
    """Every text drawn on a figure or axes (title, labels, annotations): handy in tests."""
    axes = getattr(fig_or_ax, "axes", None)
    axes = [fig_or_ax] if axes is None or not isinstance(axes, list) else axes
    out: list[str] = []
    for ax in axes:
        out += [t.get_text() for t in ax.texts]
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.get_xticklabels()]
    return out
