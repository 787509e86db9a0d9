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
import numpy as np
import torch
from torch import nn

from droplab import compare, experiments, plots, records, repro, scale

print(repro.banner())

# %% [markdown]
# The chapter teaches three things before it shows any result: the
# notation, the positions the book compares, and how to read a verdict.
# Then comes the answer so far, from the book's own runs.
#
# (notation)=
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

# %% tags=["hide-cell"]
# Check: p of the units dropped, the mean kept, and the identity in eval mode.
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
# (positions)=
# ## The positions this book compares
#
# Inside a pre-activation residual block {cite:p}`he2016identity`,
# {cite:t}`kim2023dropout` name eight places for one dropout layer, P0–P7, and
# in the classification head seven more, H1–H7. The library builds a model
# with dropout at any of them by name, e.g.
# `PreResNet(20, dropout_at="P6", head_dropout_at="H4")`. The two diagrams
# are drawn from the same layouts the networks are built from; the
# highlighted position is where the paper's guideline puts dropout.

# %% mystnb={"image": {"alt": "Diagram of a pre-activation residual block: the input x splits into the identity shortcut and a branch of BN, ReLU, Conv, BN, ReLU, Conv, joined by an addition; the dropout positions P0 to P7 are marked on the arrows, P0 on the input before the split, and P6, the Guideline 1 position, is highlighted."}}
fig = plots.position_diagram("preresnet", highlight="guideline")

# %% mystnb={"image": {"alt": "Diagram of the classification head: features pass through a 1x1 conv, BN, an activation, global average pooling, a fully connected layer and softmax to the prediction; the dropout positions H1 to H7 are marked on the arrows, and H4, before global average pooling (Guideline 2), is highlighted."}}
fig = plots.position_diagram("head", highlight="guideline")

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
# (reading-verdicts)=
# ## How to read a verdict
#
# The book's accuracy results compare two configurations, say dropout at P6
# and no dropout, and each comparison ends in one of three verdicts. This
# section says how they are computed, on a small simulated example.
#
# **Paired seeds.** Each configuration is trained once per seed. Two runs
# with the same seed start from the same initial weights and see the
# mini-batches in the same order (and, where each seed draws its own
# training images, the same images), so most of the luck of a run is shared
# by the pair. We therefore compare seed by seed: for seeds
# $1, \dots, n$ the differences $d_i = \text{acc}_i(\text{config}) -
# \text{acc}_i(\text{baseline})$, and their mean $\bar d$.
#
# **The interval.** From the $n$ differences, `droplab.compare` computes a
# 95 % confidence interval of the mean paired difference (a paired $t$
# interval, $\bar d \pm t_{0.975,\,n-1}\, s_d/\sqrt n$, with $s_d$ the
# standard deviation of the $d_i$) and the paired $t$-test's $p$-value.
#
# **The verdict.** A claim predicts which configuration is better. If the
# interval lies entirely on the predicted side of zero, the result is
# *resolved* and **supports** the claim; entirely on the other side, it is
# resolved and **contradicts** it. If the interval contains zero, the
# result is **unresolved**, and an unresolved result refutes nothing,
# neither the claim nor its opposite: a real effect smaller than the
# interval's half-width may well exist. What an unresolved result does say
# depends on what the design could have detected, and that is stated *a
# priori*, from a standard deviation known before the runs: with $n$ pairs
# and a test at level $\alpha$, a true difference $\delta$ is found with
# 80 % power when
# $\delta \ge (t_{1-\alpha/2,\,n-1} + t_{0.8,\,n-1})\, \sigma_d/\sqrt n$
# (`compare.detectable_effect`).
#
# **Several comparisons.** Eight positions tested against one baseline at
# the 95 % level give eight chances of a false alarm, not one. So the
# comparisons that answer an experiment's question are *declared* in the
# library's registry before the runs, as its **primary contrasts**, and
# judged together with Holm's step-down correction {cite:p}`holm1979simple`
# (`compare.correct`): the smallest $p$-value is tested at $\alpha/m$, the
# next at $\alpha/(m-1)$, and so on, stopping at the first that fails. Each
# corrected interval is drawn at the level of the step that judged it, so it
# excludes zero exactly when Holm rejects. Every other comparison is
# **exploratory**: shown with an uncorrected 95 % interval and labelled so,
# it can suggest the next experiment, but not settle a question.
#
# ### A worked example
#
# Ten seeds of a baseline and of three configurations, simulated here
# rather than trained: one with a large true gain, one with a gain near the
# edge of what ten seeds can see, and one with none. Each seed shares a
# random offset between its four runs (the luck of its initial weights),
# and each run adds its own noise.

# %%
rng = np.random.default_rng(10)  # the simulation's seed, picked to show a verdict that changes with the correction
SIM_SEEDS = 10
TRUE_GAIN = {"large": 0.015, "small": 0.006, "zero": 0.0}      # the true differences, as fractions
RUN_SD = 0.006                                                 # the noise of one run, shared by no other run
baseline = 0.85 + rng.normal(0, 0.015, SIM_SEEDS)              # a seed's luck: shared by its four runs
simulated = {name: baseline + gain + rng.normal(0, RUN_SD, SIM_SEEDS) for name, gain in TRUE_GAIN.items()}
exploratory = [compare.of_values(simulated[name], baseline, config=name, baseline="none", metric="final_test_acc",
                                 claim=f"{name} beats none") for name in TRUE_GAIN]
print(f"seed-to-seed spread of the baseline: {100 * baseline.std(ddof=1):.2f} points; of the paired differences: "
      + ", ".join(f"{c.config} {100 * np.std(c.diffs, ddof=1):.2f}" for c in exploratory) + " points")
for c in exploratory:
    print(f"{c.name} (true {100 * TRUE_GAIN[c.config]:+.1f}): {c.text()}, p = {c.p:.3f}")

# %% [markdown]
# The baseline itself varies more from seed to seed than any of the paired
# differences does: pairing removes the luck the two runs of a seed
# share, which is why the intervals are narrow enough to resolve anything.
# Judged alone, at 95 %, the large and the small gain are resolved and
# support their claims; the zero gain is unresolved.

# %% tags=["hide-cell"]
# Check: pairing narrows the spread; alone, "large" and "small" are resolved, "zero" is not.
assert all(np.std(c.diffs, ddof=1) < baseline.std(ddof=1) for c in exploratory)
assert [str(c.verdict) for c in exploratory] == ["supports", "supports", "unresolved"], exploratory

# %% [markdown]
# Before any run, the simulation's design fixes what it can detect: the
# differences have the standard deviation of one run's noise, since the
# seed's luck cancels, so the detectable effect is known a priori, for a
# comparison judged alone and for Holm's strictest step over three.

# %%
detectable_alone = compare.detectable_effect(RUN_SD, SIM_SEEDS)
detectable_holm = compare.detectable_effect(RUN_SD, SIM_SEEDS, 1 - 0.05 / len(TRUE_GAIN))
print(f"with {SIM_SEEDS} seeds, 80 % power: {100 * detectable_alone:.2f} points judged alone, "
      f"{100 * detectable_holm:.2f} points at Holm's first step over {len(TRUE_GAIN)}")

# %% [markdown]
# The small gain sits right at the edge of what ten seeds detect alone (four
# times in five), and below what they detect once three comparisons are
# judged together. Now
# declare the three as one family and correct them:

# %% mystnb={"image": {"alt": "Two forest plots of the same three simulated comparisons (large, small and zero gain, each minus none, in test accuracy points) around a vertical line at zero: left, uncorrected 95 percent intervals, where the large and small gains lie right of zero; right, Holm-corrected intervals over the family of three, where the small gain's interval now reaches across zero and turns grey (unresolved)."}}
corrected = compare.correct(exploratory)
fig, axes = plt.subplots(1, 2, figsize=(12.8, 3.2), sharex=True)
plots.forest(exploratory, "Judged alone (exploratory, 95 %)", ax=axes[0])
plots.forest(corrected, f"Judged together: {sum(c.resolved != 0 for c in corrected)} of {len(corrected)} "
             "resolved after Holm", ax=axes[1])
plt.show()
for c in corrected:
    print(f"{c.name}: {c.text()}, p = {c.p:.3f}, Holm-adjusted {c.p_adjusted:.3f}")

# %% [markdown]
# Corrected, the small gain is unresolved: its adjusted $p$-value exceeds
# 0.05 and its interval, drawn at the level of its Holm step, reaches across
# zero. The gain is real (it was simulated), so the correction cost a true
# finding here; that is its price for keeping the chance of any false alarm
# in the family at 5 %. Nothing in this result says the small gain is
# absent: only that ten seeds, asked three questions, cannot resolve it.
# The book's chapters read their verdicts exactly this way, from records of
# real runs.

# %% tags=["hide-cell"]
# Check: Holm only widens intervals and raises p; here it un-resolves the small gain alone.
assert all(k.low <= c.low and k.high >= c.high and k.p_adjusted >= c.p for c, k in zip(exploratory, corrected))
assert [str(c.verdict) for c in corrected] == ["supports", "unresolved", "unresolved"], corrected
assert detectable_holm > TRUE_GAIN["small"] and abs(TRUE_GAIN["small"] - detectable_alone) < 0.0005
assert corrected[1].p < 0.05 < corrected[1].p_adjusted

# %% [markdown]
# ## The answer so far, from this book's own runs
#
# Two experiments, read from committed run records with their provenance.
# In the **first regime** (left) a small PreResNet fits its 1,000
# Fashion-MNIST training images and does clearly worse on new ones, and one
# dropout layer sat at each of P0–P7 in every block; the eight positions
# against no dropout are judged together (Holm). The **positive control**
# (right) asks a prior question, on validation: does *any* regularizer help
# at all? In two regimes, long training on clean labels and training on
# labels of which a share is wrong, augmentation and dropout at P6 face no
# regularizer, judged together within each regime. Chapter 3 explains both.

# %% mystnb={"image": {"alt": "Two forest plots. Left: the first regime, test accuracy of each position P0 to P7 minus no dropout with Holm-corrected intervals over the eight, every interval crossing zero. Right: the positive control, validation accuracy of augmentation and of P6 at p = 0.1 and 0.3 minus no regularizer, in the long and the noisy-label regimes, with Holm-corrected intervals; augmentation helps in both regimes and P6 only with noisy labels."}}
POSITIONS = [f"P{i}" for i in range(8)]
first = records.check_records("residual", "class", 5, only=["none", *POSITIONS])
control = records.check_records("control", "class", 5)
print("first regime:", records.provenance_summary(first))
print("positive control:", records.provenance_summary(control))
positions = compare.correct([compare.compare(first, c, "none", claim=f"{c} changes accuracy") for c in POSITIONS],
                            family="positions")
REGULARIZERS = ("augment", "P6-p0.1", "P6-p0.3")
regularizers = [c for regime in ("long", "noisy") for c in compare.correct(
    [compare.compare(control, f"{regime}-{r}", f"{regime}-none", "final_val_acc", claim=f"{r} helps")
     for r in REGULARIZERS], family="regularizers")]
helps = [c.config for c in regularizers if c.verdict == compare.Verdict.SUPPORTS]
helped = {r: " and ".join(g for g in ("long", "noisy") if any(h.startswith(f"{g}-{r}") for h in helps)) or "neither"
          for r in ("augment", "P6")}      # the regimes in which each kind of regularizer helps
fig, axes = plt.subplots(1, 2, figsize=(12.8, 4.6))
plots.forest(positions, f"First regime: {sum(c.resolved != 0 for c in positions)} of {len(positions)} "
             "positions resolved", ax=axes[0], xlabel="test accuracy, position minus no dropout (points)")
plots.forest(regularizers, f"Positive control: augmentation helps in {helped['augment']}, P6 in {helped['P6']}",
             ax=axes[1],
             xlabel="validation accuracy, regularizer minus none (points)")
plt.show()

# %% [markdown]
# Where nothing regularizes, no dropout position is resolved either way:
# that regime could only measure what dropout's noise costs. The positive
# control finds a regime in which dropout itself helps: augmentation helps
# in both, dropout at P6 only where labels are noisy, where networks
# memorize wrong labels. That is where chapter 3 asks *where* dropout helps,
# with the positions declared and corrected before the runs; chapter 1
# starts from dropout's mechanics, chapter 2 from its clash with batch
# normalization.

# %% tags=["hide-cell"]
# Check: the first regime overfits 1,000 images, yet no position is resolved; P6 helps with noisy labels only.
none = [r for r in first if r["config"]["name"] == "none"]
assert experiments.spec("residual", "none", "class").data.train_size == 1000
assert all(r["final_train_acc"] - r["final_test_acc"] >= 0.05 for r in none)
assert all(c.verdict == compare.Verdict.UNRESOLVED for c in positions), positions
assert all(c.n == 5 for c in positions + regularizers)
assert helped == {"augment": "long and noisy", "P6": "noisy"}, helps

# %% [markdown]
# In the noisy-label regime, chapter 3's placement study declared five
# contrasts before its runs: Guideline 1 as a ranking (P6 against no
# dropout, the block input P0, and P2 and P4, the positions before a BN)
# and Guideline 2 (H4 against H5, chapter 4). Judged together:

# %% mystnb={"image": {"alt": "Forest plot of the placement study's five primary contrasts in the noisy-label regime: P6 minus none, P0, P2 and P4, and H4 minus H5, test accuracy differences with Holm-corrected intervals coloured by verdict around a vertical line at zero."}}
STUDY = experiments.get("placement")
study = records.check_records(STUDY, "class", 10)
print("placement study:", records.provenance_summary(study))
primary = compare.primary(study, STUDY)
fig, ax = plots.forest(primary, f"Where dropout helps: {sum(c.verdict == compare.Verdict.SUPPORTS for c in primary)} "
                       f"of {len(primary)} declared contrasts support the guidelines",
                       xlabel="test accuracy difference (points)")
plt.show()

# %% [markdown]
# Guideline 1's ranking holds in every part; whether H4 beats H5 the
# study could not tell, and chapter 4 says why. The rest of the book
# builds up to these answers.

# %% tags=["hide-cell"]
# Check: the four Guideline 1 contrasts support it; H4 − H5 is unresolved.
assert [c.verdict for c in primary if c.config == "P6"] == [compare.Verdict.SUPPORTS] * 4, primary
assert {c.name: c.verdict for c in primary}["H4 − H5"] == compare.Verdict.UNRESOLVED

# %% [markdown]
# ## How to read the checks
#
# After every claim comes a cell that asserts it on the numbers just
# computed, with a tolerance that fits the scale (in the web edition these
# cells are folded away; click to open them). If a check fails, the
# notebook stops: the text above it is no longer true for your run, and you
# should not trust the prose that follows. When our experiments disagree with
# a paper, the book says so and shows the numbers.
#
# ## Licence
#
# The code (`droplab`, the tests, the notebooks' code cells) is MIT-licensed;
# the text and figures are CC BY 4.0. See `LICENSE` in the repository.
