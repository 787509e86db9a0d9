"""droplab.blocks: one slot list per block kind, and everything that reads it agrees with it.

The networks put each dropout between the layers the layout names (Kim et al. Figures 2
and 4), the table of positions describes those layers, what the book derives from a layout
(the next norm, a position's neighbours) matches the built networks, and the modules import
one way: the layouts below the networks, the networks side by side below ``networks.build``.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

import droplab
from droplab import blocks, inconsistency, models, transformer
from droplab.blocks import DROP_PATH, LAYOUTS
from droplab.dropout import is_dropout

RESIDUAL = ("preresnet-basic", "preresnet-bottleneck", "resnetv1")


def built(layout: str, at: str) -> nn.Module:
    """The smallest network of ``layout`` with its dropout at ``at``, built as the chapters build it."""
    torch.manual_seed(0)
    if layout == "preresnet-basic":
        return models.PreResNet(8, width=8, dropout_at=at)
    if layout == "preresnet-bottleneck":
        return models.PreResNet(11, width=8, block="bottleneck", dropout_at=at)
    if layout == "resnetv1":
        return models.ResNetV1(8, width=8, dropout_at=at)
    if layout == "head":
        return models.PreResNet(8, width=8, head_dropout_at=at, head_conv=True)
    return transformer.ViT(1, dim=32, dropout_at=at)


def around_the_dropout(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """The modules right before and after the one dropout of the first block's branch (or of the
    head, or of the attention's ``attend``) in its ``nn.Sequential``."""
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            mods = list(seq)
            hits = [i for i, m in enumerate(mods) if is_dropout(m)]
            if hits:
                i = hits[0]
                return (mods[i - 1] if i > 0 else None), (mods[i + 1] if i + 1 < len(mods) else None)
    raise AssertionError("no dropout layer in any nn.Sequential")


CASES = [(name, at) for name in LAYOUTS for at in LAYOUTS[name].positions if at != LAYOUTS[name].block_input]


# --- the layouts themselves --------------------------------------------------------------

def test_each_layout_describes_exactly_its_positions_in_order():
    for name, lay in LAYOUTS.items():
        assert tuple(lay.where) == lay.positions, name
        assert set(lay.guideline) <= set(lay.positions), name


def test_the_books_position_names_come_from_the_layouts():
    assert blocks.POSITION_NAMES == tuple(f"P{i}" for i in range(8))
    assert blocks.HEAD_POSITION_NAMES == tuple(f"H{i}" for i in range(1, 8))
    assert blocks.TRANSFORMER_POSITION_NAMES == ("T0", "T1", "T2", "T3", "T4")
    assert LAYOUTS["preresnet-bottleneck"].positions == blocks.POSITION_NAMES
    assert LAYOUTS["resnetv1"].positions == blocks.POSITION_NAMES[:-1]      # P6 ends its branch
    assert {blocks.GUIDELINE[n][0] for n in RESIDUAL} == {"P6"} and blocks.GUIDELINE["head"][0] == "H4"


@pytest.mark.parametrize("name, at", CASES)
def test_the_table_of_positions_names_a_layer_next_to_each_position(name, at):
    before, after = blocks.neighbours(name, at, head_conv=True)
    words = [layer.label.split()[0].lower() for layer in (before, after) if layer is not None]
    assert any(w in LAYOUTS[name].where[at].lower() for w in words), (at, LAYOUTS[name].where[at], words)


# --- the built networks follow them ------------------------------------------------------

@pytest.mark.parametrize("name, at", CASES)
def test_built_networks_put_the_dropout_between_the_layers_the_layout_names(name, at):
    expected = blocks.neighbours(name, at, head_conv=True)
    for layer, module in zip(expected, around_the_dropout(built(name, at))):
        assert (module is None) if layer is None else layer.accepts(module), (at, layer, module)


@pytest.mark.parametrize("name", RESIDUAL)
def test_the_block_input_position_drops_before_the_split(name):
    block = built(name, "P0").blocks[0]
    assert is_dropout(block.pre) and not any(is_dropout(m) for m in block.branch)


def test_t0_is_the_first_blocks_input_once():
    vit = built("attention", "T0")
    assert is_dropout(vit.features[0][-1]) and isinstance(vit.features[1], transformer.TransformerBlock)
    assert sum(is_dropout(m) for m in vit.modules()) == 1


def test_fill_refuses_the_wrong_layers_and_says_how_to_fix_it():
    with pytest.raises(ValueError, match="6 layers .*BN1, ReLU, Conv1.*one module per layer"):
        blocks.fill("preresnet-basic", nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="slot BN1 .* norm layer .*got Conv2d"):
        blocks.fill("preresnet-basic", *[nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                                         nn.ReLU(), nn.Conv2d(4, 4, 3)])
    with pytest.raises(ValueError, match="valid layouts are preresnet-basic"):
        blocks.layout("densenet")


def test_an_unknown_position_lists_the_valid_ones():
    with pytest.raises(ValueError, match="P0, P1, P2, P3, P4, P5, P6, P7"):
        blocks.neighbours("preresnet-basic", "P8")
    with pytest.raises(ValueError, match="H1, H2"):
        blocks.next_norm("head", "P6")


# --- what the book derives from a layout -------------------------------------------------

def test_neighbours_are_chapter_4s_table_of_the_head():
    table = {"H1": (None, "Conv1x1"), "H2": ("Conv1x1", "BN"), "H3": ("BN", "act"), "H4": ("act", "GAP"),
             "H5": ("Flatten", "FC"), "H6": ("FC", None), "H7": ("softmax", None)}
    for at, pair in table.items():
        assert tuple(layer and layer.label for layer in blocks.neighbours("head", at, head_conv=True)) == pair
    assert blocks.neighbours("head", "H4")[0] is None          # without the head conv, H4 opens the head


def test_neighbours_in_the_preresnet_branch_and_droppath_at_p7s_place():
    labels = {at: tuple(layer and layer.label for layer in blocks.neighbours("preresnet-basic", at))
              for at in (*blocks.POSITION_NAMES, DROP_PATH)}
    assert labels["P0"] == (None, None)                        # the block input, not in the branch
    assert labels["P1"] == (None, "BN1") and labels["P4"] == ("Conv1", "BN2") and labels["P6"] == ("ReLU", "Conv2")
    assert labels["P7"] == labels[DROP_PATH] == ("Conv2", None)


def first_norm_after_the_dropout(block: blocks.ResidualBlock) -> str:
    """Which BN of the block the dropout feeds first, read off the built block ("out": none)."""
    order = [block.pre, *block.branch]
    norms = [m for m in block.branch if isinstance(m, nn.BatchNorm2d)]
    i = next(k for k, m in enumerate(order) if is_dropout(m))
    return next((f"BN{norms.index(m) + 1}" for m in order[i:] if isinstance(m, nn.BatchNorm2d)), "out")


@pytest.mark.parametrize("name", RESIDUAL)
def test_next_norm_is_the_first_bn_after_the_dropout_in_the_built_block(name):
    for at in (*LAYOUTS[name].positions, *((DROP_PATH,) if name != "resnetv1" else ())):
        assert blocks.next_norm(name, at) == first_norm_after_the_dropout(built(name, at).blocks[0]), at


def test_next_bn_is_kim_et_al_section_2_3():
    assert inconsistency.NEXT_BN == {"P0": "BN1", "P1": "BN1", "P2": "BN2", "P3": "BN2", "P4": "BN2",
                                     "P5": "out", "P6": "out", "P7": "out", DROP_PATH: "out"}


def test_the_fully_connected_block_is_the_preresnet_layout_with_linear_layers():
    kinds = [type(m).__name__ for m in inconsistency.mlp_branch(8, "P4", 0.5)]
    assert kinds == ["BatchNorm1d", "ReLU", "Linear", "Dropout", "BatchNorm1d", "ReLU", "Linear"]


# --- the modules import one way ----------------------------------------------------------

#: What importing each module must not pull in: the modules above it or beside it.
MUST_NOT_IMPORT = {
    "droplab.blocks": {"models", "transformer", "networks", "inconsistency", "probes", "plots", "train"},
    "droplab.models": {"transformer", "networks", "inconsistency", "probes"},
    "droplab.transformer": {"models", "networks", "inconsistency", "probes"},
    "droplab.inconsistency": {"probes", "models", "transformer", "train"},
    "droplab.plots": {"models", "transformer", "networks", "inconsistency", "probes"},
}


def test_importing_a_module_pulls_in_nothing_above_it():
    # one interpreter, droplab taken out of sys.modules before each import (torch stays loaded)
    code = (
        "import importlib, json, sys\n"
        f"seen = {{}}\nfor name in {sorted(MUST_NOT_IMPORT)!r}:\n"
        "    for key in [k for k in sys.modules if k == 'droplab' or k.startswith('droplab.')]:\n"
        "        del sys.modules[key]\n"
        "    importlib.import_module(name)\n"
        "    seen[name] = sorted(k.split('.')[1] for k in sys.modules if k.startswith('droplab.'))\n"
        "print(json.dumps(seen))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    for name, forbidden in MUST_NOT_IMPORT.items():
        assert not forbidden & set(seen[name]), (name, sorted(forbidden & set(seen[name])))


def imports_of(path: pathlib.Path) -> set[str]:
    """The droplab modules ``path`` imports anywhere in it, inside functions too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "droplab":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("droplab."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("droplab.")}
    return found - {path.stem}


#: The layers of droplab's docstring, bottom up; models and transformer side by side, plots apart.
LAYERS = ["scale", "repro", "data", "dropout", "variance", "blocks", "models", "transformer", "networks",
          "inconsistency", "surgery", "train", "probes", "metrics", "experiments", "compare", "records", "sweep",
          "bench"]


def test_every_module_imports_only_the_layers_below_it_even_inside_functions():
    folder = pathlib.Path(droplab.__file__).parent
    graph = {f.stem: imports_of(f) for f in folder.glob("*.py") if f.stem != "__init__"}
    assert set(graph) == {*LAYERS, "plots"}, "a new module needs its place in the layers (droplab's docstring)"
    for i, name in enumerate(LAYERS):
        above = graph[name] - set(LAYERS[:i])
        assert not above, f"droplab.{name} imports {', '.join(sorted(above))}, which sit above it"
    assert "transformer" not in graph["models"] and "models" not in graph["transformer"]
    assert graph["plots"] <= {"blocks"}
