# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Dropout, Where?
#
# Dropout is one line of code, and yet practitioners disagree on where that
# line goes: before or after batch normalization, inside the residual branch
# or on the shortcut, before or after global average pooling. This book
# answers the question with experiments you run yourself. Every number in it
# is computed by the cell above it, or loaded from a run record that
# `droplab.sweep` wrote, with the machine and commit that produced it.
# Numbers quoted from papers are marked as quoted and cited.
#
# The book follows two papers closely. {cite:t}`li2019understanding` explain
# why dropout and batch normalization (BN) disagree: dropout changes the
# variance of a feature between training and inference, and BN, which
# normalizes with statistics gathered in training, passes that shift on.
# {cite:t}`kim2023dropout` turn this into a theory of *placement*: which of
# eight positions inside a residual block, and which of seven positions in the
# classification head, keep the shift small, and what that does to accuracy.
#
# ## What you will find
#
# | chapter | question |
# |---|---|
# | 1. Dropout mechanics | What does dropout do in training and at inference? What is kept, what is not? |
# | 2. BN and the variance shift | Why does dropout before BN hurt, and how much? |
# | 3. Dropout in residual blocks | Which of P0–P7 should you use, and why? |
# | 4. Dropout in the head | Which of H1–H7 should you use, and why? |
# | 5. Claims tested | Do the rules of thumb from blogs and interview notes survive an experiment? |
# | 6. Beyond batch normalization | Does the variance shift survive GroupNorm and LayerNorm? Where does dropout go in a transformer block, and what about DropPath and early dropout? |
#
# ## How to run it
#
# Each chapter is a notebook (a `.py` file in jupytext's percent format, with
# an `.ipynb` twin) that calls one small library, `droplab`. One environment
# variable sets how much computing a notebook does:
#
# | `DROPLAB_SCALE` | for | budget per chapter |
# |---|---|---|
# | `smoke` | tests and CI (chosen automatically under pytest or when `CI` is set) | under a minute on a 2-core CPU |
# | `class` | the default: a laptop without a GPU | under five minutes on a 2-core CPU |
# | `paper` | one GPU: the sweeps behind the book's tables | minutes on one GPU |
#
# Only the sizes change between scales; the code is the same. `droplab`
# trains on a CUDA GPU when there is one, then Apple's MPS, then the CPU.

# %% tags=["hide-input"]
# Where droplab is not installed yet, install it: from the checkout of the book around this notebook
# (Binder, a clone), else (Colab: the notebook alone) from the repository in DROPLAB_REPOSITORY, the
# `repository: url` of the book's _config.yml. droplab downloads Fashion-MNIST if it is missing.
import importlib.util
import os
import pathlib
import subprocess
import sys

if importlib.util.find_spec("droplab") is None:
    book = next((str(d) for d in pathlib.Path("_").resolve().parents if (d / "lib" / "droplab").is_dir()), None)  # this folder or one above
    source = book or os.environ.get("DROPLAB_REPOSITORY") or sys.exit("droplab is not installed and this notebook is not in a checkout of the book: run %env DROPLAB_REPOSITORY=https://github.com/OWNER/NAME (OWNER/NAME as in this page's Colab address), then this cell again.")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *(["-e", book] if book else [f"droplab @ git+{source}"])], check=True)

# %%
import matplotlib.pyplot as plt
import torch
from torch import nn

from droplab import metrics, plots, records, repro, scale

print(repro.banner())

# %% [markdown]
# ## The answer so far, from this book's own runs
#
# Before any theory, the evidence. The figure shows what one dropout layer
# ($p = 0.1$) at each of the eight positions inside every residual block of
# a small PreResNet did to its test accuracy on Fashion-MNIST, against the
# same network without dropout: the paired difference over five seeds, with
# its 95 % confidence interval. The runs were made where dropout *can*
# help: without dropout the network fits its 1,000 training images and
# does clearly worse on new ones. They are committed run records, loaded
# here with their provenance; chapter 3 explains the regime, the positions
# and the paper these numbers test.

# %%
POSITIONS = [f"P{i}" for i in range(8)]
recs = records.check_records("residual", "class", 5, only=["none", *POSITIONS])
rows = {r.config: r for r in records.table(recs)}
hurts = [c for c in POSITIONS if metrics.resolved_sign(rows[c].diff, rows[c].diff_ci95) < 0]
helps = [c for c in POSITIONS if metrics.resolved_sign(rows[c].diff, rows[c].diff_ci95) > 0]
none = [r for r in recs if r["config"]["name"] == "none"]
print(f"{len(recs)} records, {recs[0]['provenance']['device_name']}, commit "
      f"{recs[0]['provenance']['git_commit']}; no dropout: train "
      f"{100 * sum(r['final_train_acc'] for r in none) / len(none):.1f} %, test "
      f"{100 * sum(r['final_test_acc'] for r in none) / len(none):.1f} %")
with plots.style():
    fig, ax = plots.figure(f"Dropout in every residual block: {', '.join(hurts) or 'no position'} resolved as "
                           f"harmful, {', '.join(helps) or 'none'} as helpful",
                           "dropout position", "test accuracy minus no dropout (points)")
    plots.differences_with_ci(ax, POSITIONS, [100 * rows[c].diff for c in POSITIONS],
                              [100 * rows[c].diff_ci95 for c in POSITIONS], highlight=["P5", "P6"])
plt.show()

# %% [markdown]
# Check: the title is computed from the intervals, and the baseline the
# differences are taken from really overfits (train − test of at least 5
# points), so a position that helped would have had room to show it.

# %%
assert all(r["final_train_acc"] - r["final_test_acc"] >= 0.05 for r in none)
assert set(hurts).isdisjoint(helps) and all(rows[c].n_paired == 5 for c in POSITIONS)

# %% [markdown]
# ## Notation: `p` drops, `q` keeps
#
# PyTorch's `nn.Dropout(p)` *drops* each unit with probability $p$ and scales
# the survivors by $1/(1-p)$ during training, so that the expected value of
# every unit stays the same. {cite:t}`kim2023dropout` write $p$ for the
# probability of *keeping* a unit. To avoid the clash this book keeps
# PyTorch's `p` in code and writes
#
# $$q = 1 - p$$
#
# for the keep probability in every formula, saying so wherever a formula from
# the paper appears. In that notation a dropout layer in training computes
# $\tfrac{1}{q} M x$, with $M$ a diagonal matrix of independent
# $\mathrm{Bernoulli}(q)$ entries, and at inference it computes $x$.
#
# A first measurement: the mean of a feature survives dropout. We push a
# batch of positive features through `nn.Dropout(p=0.3)` in training mode and
# compare means.

# %%
repro.seed_everything(0)
p = 0.3
x = torch.rand(scale.pick(smoke=20_000, class_=200_000, paper=1_000_000)) + 1.0  # E[x] = 1.5
dropped = nn.Dropout(p=p).train()(x)
fraction_dropped = (dropped == 0).float().mean().item()
print(f"fraction of units dropped: {fraction_dropped:.4f}   (p = {p})")
print(f"mean before: {x.mean().item():.4f}   mean after: {dropped.mean().item():.4f}")

# %% [markdown]
# The dropped fraction is $p$ and the mean is unchanged, up to sampling
# error. The check below allows five standard errors of each estimate.

# %%
n = x.numel()
q = 1 - p
se_fraction = (p * q / n) ** 0.5
se_mean = (dropped.var().item() / n) ** 0.5
assert abs(fraction_dropped - p) < 5 * se_fraction, (fraction_dropped, p)
assert abs(dropped.mean().item() - x.mean().item()) < 5 * se_mean
assert torch.equal(nn.Dropout(p=p).eval()(x), x), "in eval mode dropout is the identity"

# %% [markdown]
# The variance is a different story: it grows in training and does not in
# evaluation. Chapter 1 measures by how much; chapters 2–4 follow what that
# does to the BN layers behind it.
#
# ## The positions this book compares
#
# Inside a pre-activation residual block {cite:p}`he2016identity`,
# {cite:t}`kim2023dropout` name eight places for one dropout layer, P0–P7, and
# in the classification head seven more, H1–H7. The library builds a model
# with dropout at any of them by name, e.g.
# `PreResNet(20, dropout_at="P6", head_dropout_at="H4")`.

# %%
fig = plots.position_diagram("preresnet")

# %%
fig = plots.position_diagram("head")

# %% [markdown]
# | name | where, in the residual block | name | where, in the head |
# |---|---|---|---|
# | P0 | block input, before the shortcut splits off | H1 | head input, before the 1×1 conv |
# | P1 | start of the branch, before BN1 | H2 | after the head conv, before its BN |
# | P2 | after BN1 | H3 | after the head BN |
# | P3 | after the first ReLU | H4 | after the activation, before GAP ({prf:ref}`guideline-2`) |
# | P4 | after Conv1, before BN2 | H5 | after GAP, before FC (common practice) |
# | P5 | after BN2 | H6 | after FC, on the logits |
# | P6 | after the second ReLU, before Conv2 ({prf:ref}`guideline-1`) | H7 | after softmax, on the probabilities |
# | P7 | after Conv2, before the addition | | |
#
# ## How to read the checks
#
# After every claim comes a cell that asserts it on the numbers just
# computed, with a tolerance that fits the scale. If a check fails, the
# notebook stops: the text above it is no longer true for your run, and you
# should not trust the prose that follows. When our experiments disagree with
# a paper, the book says so and shows the numbers.
#
# ## Licence
#
# The code (`droplab`, the tests, the notebooks' code cells) is MIT-licensed;
# the text and figures are CC BY 4.0. See `LICENSE` in the repository.
