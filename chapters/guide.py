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
# # A practitioner's guide: where to put dropout
#
# The short answers, each tagged with what stands behind it. Every number on
# this page is computed when the page is built, from the run records the
# chapters use; the chapters show how.

# %% tags=["remove-cell"]
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

# %% tags=["remove-cell"]
import matplotlib.pyplot as plt
from myst_nb import glue

from droplab import compare, experiments, plots, records

Verdict = compare.Verdict
STUDY = experiments.get("placement")
study = records.check_records(STUDY, "class", 10)
control = records.check_records("control", "class", 5)
pilot = {regime: compare.correct([compare.compare(control, f"{regime}-{r}", f"{regime}-none", "final_val_acc")
                                  for r in ("augment", "P6-p0.1", "P6-p0.3")]) for regime in experiments.REGIMES}
planning_sd = compare.pooled_sd(pilot["noisy"])
primary = {c.name: c for c in compare.primary(study, STUDY, planning_sd=planning_sd)}
explore = {c.config: c for c in compare.against_baselines(study)}
POSITIONS = [f"P{i}" for i in range(8)]
first = compare.correct([compare.compare(records.check_records("residual", "class", 5, only=["none", *POSITIONS]), c, "none")
                         for c in POSITIONS])
first_head = compare.correct([compare.compare(records.check_records("head", "class", 5), f"H{i}", "none")
                              for i in range(1, 8)])

texts = {name.replace(" − ", "_minus_"): c.text() for name, c in primary.items()}
texts.update({f"{cfg}_vs_none": explore[cfg].text() for cfg in ("P0", "P2", "H4", "H5")})
texts.update({
    "noisy_share": f"{100 * experiments.spec(STUDY, 'none', 'class', seed=0).data.label_noise:.0f} %",
    "aug_long": pilot["long"][0].text(), "p6_long": pilot["long"][2].text(), "p6_noisy": pilot["noisy"][2].text(),
    "first_resolved": f"{sum(c.resolved != 0 for c in first + first_head)} of {len(first) + len(first_head)}",
    "rates": ", ".join(f"{pos} {p:g}" for pos, p in experiments.PLACEMENT_P.items()),
    "seeds": f"{len({r['seed'] for r in study})}"})
for name, text in texts.items():
    glue(name, text, display=False)

# %% [markdown]
# ```{admonition} In short
# :class: tip
#
# 1. **First check that a regularizer helps at all** in your setting (a
#    positive control on a validation split). Where none does, no dropout
#    position will: this book's first regime was such a place
#    (**[records]**: {glue:text}`first_resolved` positions resolved there).
# 2. **In a residual block, after the branch's last BN-ReLU, before its last
#    convolution (P6), never on the block input (P0).** Where dropout helps,
#    P6 beat no dropout and each position before a BN or on the block input
#    (**[records]**, corrected together).
# 3. **In the head, never on the logits or the probabilities (H6, H7)**;
#    before global average pooling (H4) rather than after it (H5) is the
#    paper's advice, which this book's records could not confirm or refute
#    (**[mechanism]**).
# 4. **Choose the rate on a validation split**, with networks that are not
#    the ones you report.
# 5. **With GroupNorm, LayerNorm or a transformer**, the variance-shift
#    argument changes; see below.
#
# Each point is tagged below with its evidence and the chapter behind it.
# ```

# %% tags=["remove-input"] mystnb={"image": {"alt": "Two diagrams: the pre-activation residual block with dropout positions P0 to P7, and the classification head with H1 to H7; the positions the guidelines recommend are highlighted."}}
plots.position_diagram("preresnet", highlight="guideline", title="The residual block: P0–P7 (Guideline 1 marked)")
plots.position_diagram("head", highlight="guideline", title="The head: H1–H7 (Guideline 2 marked)")
plt.show()

# %% [markdown]
# ## The tags
#
# - **[records]**: accuracy measured in this book's committed run records,
#   with paired seeds and the correction the chapter states;
# - **[measured live]**: computed in the chapter when you run it;
# - **[mechanism]**: only the variance-shift measurements ($\Delta$, losses,
#   gradients) support it; the accuracy effect was not resolved, or not
#   measured;
# - **[quoted]**: the papers report it; this book has not measured it.
#
# Where a difference is given it reads: mean [interval] in points of test
# accuracy, and the verdict on the claim (chapter 0 explains intervals,
# verdicts and Holm's correction).
#
# ## Where the evidence comes from
#
# A regularizer can only help a network that fits its training data and
# generalizes worse, and even that is not enough. In this book's first regime
# (25 epochs, weight decay $5 \times 10^{-4}$) not even augmentation helped,
# and no dropout position was resolved from no dropout
# ({glue:text}`first_resolved`, chapters 3–4). A pilot then found a regime
# where regularizers help, on validation: with clean labels and 100 epochs
# augmentation helped ({glue:text}`aug_long`) but P6 did not resolve
# ({glue:text}`p6_long`); with {glue:text}`noisy_share` of the training labels
# wrong, P6 helped ({glue:text}`p6_noisy`). The placement study ran there,
# {glue:text}`seeds` seeds, each position at its rate chosen on validation
# ({glue:text}`rates`), with five primary contrasts declared in advance and
# corrected together by Holm (chapter 3, section 6). Its answers are about
# that regime: small Fashion-MNIST networks with noisy labels, not ImageNet.
#
# ## Residual CNNs (ResNet, PreResNet, and relatives)
#
# - **After the last BN-ReLU of the branch, before its last weight layer
#   (P6; P5 is the same network)**: {prf:ref}`guideline-1` of
#   {cite:t}`kim2023dropout`, and where Wide ResNets have put their dropout
#   since 2016 {cite:p}`zagoruyko2016wide`. **[records]**: P6 − none
#   {glue:text}`P6_minus_none`. **[mechanism]**: the skip connection
#   dilutes the variance shift there ({prf:ref}`prop-3`, {prf:ref}`prop-4`,
#   chapter 3). **[quoted]**: gains of a fraction of a point in the paper's
#   Table 1, within its own run-to-run noise.
# - **Guideline 1 is a ranking**, and the study tests it as one; every part
#   holds: P6 against the block input, P6 − P0 {glue:text}`P6_minus_P0`;
#   against dropout after the first BN-ReLU, P6 − P2
#   {glue:text}`P6_minus_P2`; against dropout right before the second BN,
#   P6 − P4 {glue:text}`P6_minus_P4` (**[records]**, chapter 3). The lead
#   over P2 is small: P2 helps too (P2 − none {glue:text}`P2_vs_none`,
#   exploratory). What the helpful positions share in that regime is that,
#   at their chosen rates, they stop the network from memorizing its wrong
#   labels; right before a BN (P4), only the smallest rate was tolerated,
#   and it does not.
# - **Never on the block input (P0)**: the shortcut carries the dropped
#   signal and the shift compounds through the blocks. **[mechanism]**
#   (chapter 3, section 4); **[records]**: P0 − none {glue:text}`P0_vs_none`
#   (exploratory). **[quoted]**: dropout on the shortcut was among the
#   shortcut variants {cite:t}`he2016identity` tried, and it trained worse
#   than the plain identity shortcut: the precedent for P0.
# - **At the end of the branch (P7)**, the noise joins the shortcut after
#   the branch's last weight layer. **[mechanism]**: the next BN sees the
#   same small shift as after P6 (chapter 3, section 4); its accuracy was
#   not resolved from no dropout in the first regime, and the placement
#   study did not train it.
# - If you must keep dropout before a BN (an existing model), **re-estimate
#   the BN statistics with dropout off** after training
#   (`droplab.train.recalibrate_bn`). **[measured live]**: chapter 2.
#
# ## The classification head
#
# - **Before global average pooling (H4, or H3 with a ReLU head), not after
#   it (H5)**: {prf:ref}`guideline-2`. Dropout on the feature map is averaged
#   over positions, so the pooled output varies less. **[records]**: H4 − H5
#   {glue:text}`H4_minus_H5`: unresolved, and in that regime neither helps
#   (H4 − none {glue:text}`H4_vs_none`, H5 − none {glue:text}`H5_vs_none`,
#   exploratory), so the records neither confirm nor refute the guideline.
#   **[mechanism]**: {prf:ref}`prop-5`, on real feature maps
#   (chapter 4). After GAP, before the classifier, is where
#   {cite:t}`li2019understanding` put dropout to avoid the shift.
# - **Never on the logits or the probabilities (H6, H7)**: a correct
#   prediction can get a huge loss from one unlucky mask. **[mechanism]**,
#   chapter 4: at H6 the gradients point the right way and are abnormal only
#   in size, at H7 they vanish; a network *trained* with H6 learns to keep
#   its competing logits below zero (**[measured live]**).
# - **Not in front of the head's BN (H1, H2)**, for chapter 2's reason.
#   **[mechanism]**.
#
# ## What rate to start from
#
# - Choose it on a validation split, with networks that are not the ones
#   you report (**[records]**: the rates above, chapter 3). A best rate at
#   the low edge of the grid is what *no* benefit looks like from inside a
#   grid: in the first regime every position chose the smallest or second
#   smallest rate, and none helped.
# - Keep it fixed during training unless you also re-estimate BN statistics
#   (chapter 2).
#
# ## Beyond batch normalization
#
# Chapter 6 ({doc}`06_beyond_batch_norm`) asks what changes without BN.
#
# - **With GroupNorm or LayerNorm, the variance shift stops at the norm**:
#   a per-sample normalization divides out the scale dropout gave its input,
#   in training and at inference alike. **[mechanism]**, chapter 6; its
#   accuracy records in the first regime do not show dropout before such a
#   norm to be free.
# - **In a pre-LN transformer**, chapter 6's records compare dropout on the
#   embeddings (T0), the attention probabilities (T1) and the MLP (T3, T4)
#   **[records]**; one dropout on the stream (T0) is not P0's dropout in
#   every block.
# - **DropPath is P7 as far as the next BN can tell** (**[mechanism]**);
#   **[quoted]**: its gains are for deep networks {cite:p}`huang2016deep`.
# - **Early dropout** {cite:p}`liu2023dropout` is tested in chapter 6 in an
#   overfitting and an underfitting regime (**[records]**).
#
# ## Plain CNNs and MLPs
#
# - **Plain CNN with BN**: dropout after the last BN, not in front of every
#   BN (chapter 2 trains both, **[measured live]**).
# - **MLP without BN**: dropout after the hidden activations is the classic
#   setting {cite:p}`srivastava2014dropout`; chapter 1 measures how the
#   train–test gap shrinks with the rate (**[measured live]**).
# - **Convolutional feature maps**: neighbouring activations are
#   correlated, so element-wise dropout removes less than its rate suggests;
#   drop whole channels (`nn.Dropout2d`) if you want the rate to mean what it
#   says (chapter 1).
#
# ## Fine-tuning a pre-trained network
#
# - Chapter 5 pre-trains a CNN on half of Fashion-MNIST's classes and
#   fine-tunes it on the other half with dropout inserted early, late or in
#   the head (claim 4, **[measured live]**): the advice there is to add
#   dropout, if at all, after the network's last BN, and to re-estimate BN
#   statistics if you insert it before one.
#
# ## What to measure
#
# - **A positive control and paired seeds.** Before asking where dropout
#   helps, show that some regularizer helps on validation; then compare
#   configurations seed by seed, declare the comparisons that answer your
#   question before the runs, and correct across them (chapter 0).
# - **The inconsistency ratio** $\Delta = \mathrm{Var}_\text{test} /
#   \mathrm{Var}_\text{train}$ at the input of every BN that follows a
#   dropout (`droplab.variance.inconsistency_ratio`, chapters 2–3).
# - **For uncertainty (MC dropout)**, switch on only the dropout layers at
#   inference (`droplab.dropout.mc_dropout`), never `model.train()`, which
#   also switches BN to batch statistics (chapters 1 and 5).

# %% tags=["hide-cell"]
# Checks: the page's claims against the numbers above.
assert all(c.verdict == Verdict.UNRESOLVED for c in first + first_head)
assert pilot["long"][0].verdict == Verdict.SUPPORTS and pilot["noisy"][2].verdict == Verdict.SUPPORTS
assert pilot["long"][2].verdict == Verdict.UNRESOLVED
assert set(primary) == {"P6 − none", "P6 − P0", "P6 − P2", "P6 − P4", "H4 − H5"}
guideline1 = [primary[f"P6 − {b}"] for b in ("none", "P0", "P2", "P4")]
assert all(c.verdict == Verdict.SUPPORTS for c in guideline1), guideline1
assert primary["P6 − P2"].mean < min(primary["P6 − P4"].mean, primary["P6 − none"].mean) / 3
assert explore["P2"].verdict == Verdict.SUPPORTS
assert primary["H4 − H5"].verdict == Verdict.UNRESOLVED
assert all(explore[c].verdict == Verdict.UNRESOLVED for c in ("H4", "H5")), explore
memorized = {c: min(r["final_train_acc"] for r in study if r["config"]["name"] == c) for c in ("none", "P4", "H4", "H5")}
assert min(memorized.values()) > 0.99, memorized
assert max(r["final_train_acc"] for r in study if r["config"]["name"] in ("P2", "P6")) < 0.8
assert experiments.PLACEMENT_P["P4"] == min(experiments.PLACEMENT_GRID)
