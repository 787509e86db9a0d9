"""The book's figure helpers draw, and the diagrams name every dropout position (droplab.plots)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from droplab import blocks, plots


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_importing_plots_changes_no_matplotlib_setting() -> None:
    # copy rcParams without resolving the "auto" backend (reading it would import pyplot itself)
    code = (
        "import sys, matplotlib as mpl; snap = lambda: {k: dict.__getitem__(mpl.rcParams, k) for k in mpl.rcParams}; "
        "before = snap(); import droplab.plots; "
        "assert snap() == before; assert 'matplotlib.pyplot' not in sys.modules"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_style_is_undone_after_the_context() -> None:
    before = matplotlib.rcParams["axes.spines.top"]
    with plots.style():
        assert matplotlib.rcParams["axes.spines.top"] is False
    assert matplotlib.rcParams["axes.spines.top"] == before


def test_preresnet_diagram_labels_all_eight_positions() -> None:
    fig = plots.position_diagram("preresnet", highlight="guideline")
    drawn = plots.texts(fig)
    for name in [f"P{i}" for i in range(8)]:
        assert name in drawn
    for box in ("BN1", "BN2", "Conv1", "Conv2", "ReLU", "+"):
        assert box in drawn


def test_head_diagram_labels_all_seven_positions() -> None:
    fig = plots.position_diagram("head", highlight="H4")
    drawn = plots.texts(fig)
    for name in [f"H{i}" for i in range(1, 8)]:
        assert name in drawn
    for box in ("Conv1x1", "BN", "act", "GAP", "FC", "softmax"):
        assert box in drawn
    assert "P0" not in drawn


@pytest.mark.parametrize("kind", ["bottleneck", "resnetv1"])
def test_other_blocks_draw_with_the_guideline_marked(kind: str) -> None:
    fig = plots.position_diagram(kind, highlight="guideline")
    drawn = plots.texts(fig)
    assert all(g in drawn for g in blocks.GUIDELINE[plots.DIAGRAM_KINDS.get(kind, kind)])
    fig.savefig(__import__("io").BytesIO(), format="png")


def test_diagram_rejects_an_unknown_kind_and_wrong_labels() -> None:
    with pytest.raises(ValueError, match="preresnet"):
        plots.position_diagram("transformer")
    with pytest.raises(ValueError, match="8 positions"):
        plots.position_diagram("preresnet", labels=["P0", "P1"])


def test_measured_vs_analytic_draws_a_line_and_markers() -> None:
    fig, ax = plots.figure("Residual blocks keep Δ closer to 1", "Var[x0]", "Δ (test / train variance)")
    x = np.array([0.5, 1.0, 2.0])
    plots.measured_vs_analytic(ax, x, [0.55, 0.63, 0.72], lambda v: (v + 0.68) / (v + 1.36), label="q=0.5",
                               err=[0.01, 0.01, 0.01])
    plots.measured_vs_analytic(ax, x, [0.4, 0.4, 0.4], [0.405] * 3, label="non-residual")
    assert len(ax.lines) >= 2
    assert ax.get_xlabel() == "Var[x0]" and ax.get_title().startswith("Residual")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "q=0.5: analytic" in labels and "q=0.5: measured" in labels
    fig.savefig(__import__("io").BytesIO(), format="png")


def test_bars_with_ci_draw_bars_and_the_baseline() -> None:
    _, ax = plots.figure("P5 and P6 help, P0 hurts", "dropout position", "test accuracy (%)")
    names = [f"P{i}" for i in range(8)]
    plots.bars_with_ci(ax, names, np.linspace(80, 94, 8), np.full(8, 0.3), baseline=93.6, highlight=("P5", "P6"))
    assert len(ax.patches) == 8
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    with pytest.raises(ValueError, match="one label per bar"):
        plots.bars_with_ci(ax, names[:3], [1.0, 2.0], None)


POSITION = r"^[PHT]\d$"


@pytest.mark.parametrize("kind", [*plots.DIAGRAM_KINDS, *blocks.LAYOUTS])
def test_every_diagram_names_the_positions_of_its_slot_list_in_order(kind: str) -> None:
    # the figure is drawn from the layout the networks are built from: same names, same order
    layout = blocks.layout(plots.DIAGRAM_KINDS.get(kind, kind))
    fig = plots.position_diagram(kind)
    drawn = plots.texts(fig)
    assert [t for t in drawn if re.match(POSITION, t)] == list(layout.positions)
    boxes = [e.label for e in blocks.flatten(layout.slots) if isinstance(e, blocks.Layer) and e.drawn]
    assert [t for t in drawn if t in boxes] == boxes
    assert fig.axes[0].get_title().endswith(f"{layout.positions[0]}–{layout.positions[-1]}")
    assert ("+" in drawn) == layout.residual


def test_the_head_diagram_leaves_out_flatten_but_the_head_has_it() -> None:
    assert "Flatten" not in plots.texts(plots.position_diagram("head"))
    assert "Flatten" in [str(e) for e in blocks.layout("head").slots]


def test_resnetv1_diagram_draws_the_relu_after_the_addition() -> None:
    assert "ReLU → out" in plots.texts(plots.position_diagram("resnetv1"))
    assert "out" in plots.texts(plots.position_diagram("preresnet"))


def test_a_forest_legend_outside_covers_no_row():
    from droplab import compare

    rows = [compare.of_values([0.02, 0.03, 0.01], [0.0, 0.0, 0.0], config=f"P{i}", baseline="none") for i in range(3)]
    fig, ax = plots.forest(rows, "legend beside the plot", legend_outside=True)
    fig.canvas.draw()
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes.x1        # right of the plotting area, over none of its rows
    plt.close(fig)
