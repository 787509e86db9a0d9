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
# # Dropout mechanics, measured
#
# Before asking *where* dropout belongs, this chapter pins down *what* it
# does. We write it from scratch, check it against PyTorch, and measure each
# of its properties on numbers the notebook computes: the masks it draws, the
# scaling that keeps the mean, the variance it does not keep, the ensemble it
# stands for, the uncertainty it can report, whether it regularizes, why
# convolutional feature maps need a different kind of dropout, and the
# mistakes that quietly break it.
#
# A reminder of the book's {ref}`notation`: `p` is the probability of
# **dropping** a unit and $q = 1 - p$ of keeping it; every formula of
# {cite:t}`kim2023dropout`, who write $p$ for the keep probability, is
# rewritten with $q$.

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
import copy
import itertools
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from droplab import data, metrics, models, plots, probes, repro, scale, surgery, train, variance
from droplab import dropout as D

dev = repro.device()
print(repro.banner(dev))

# %% [markdown]
# Every size in this chapter comes from one place, so that the same code
# runs in seconds under the tests (`smoke`), in a few minutes on a laptop
# (`class`, the default) and at full size on a GPU (`paper`).

# %%
N_ELEM = scale.pick(smoke=20_000, class_=200_000, paper=1_000_000)  # draws per measured point
N_TRAIN = scale.pick(smoke=1_000, class_=2_000, paper=10_000)  # Fashion-MNIST training images
N_TEST = scale.pick(smoke=1_000, class_=2_000, paper=5_000)  # test images
EPOCHS = scale.pick(smoke=12, class_=20, paper=40)
T_MAX = scale.pick(smoke=100, class_=200, paper=500)  # Monte Carlo passes
N_ENS = scale.pick(smoke=500, class_=2_000, paper=5_000)  # test images for the MC averages of section 5
HIDDEN = (256, 256)  # the MLP's hidden widths
RECIPE = {"batch_size": 64, "lr": 0.02, "augment": False, "weight_decay": 0.0}  # no other regularizer

full_train, full_test = data.load("fashion-mnist", "train"), data.load("fashion-mnist", "test")
train_set = data.subset(full_train, N_TRAIN, seed=0)
test_set = data.subset(full_test, N_TEST, seed=1)
stats = train.input_stats(train_set.images)  # per-channel mean and std of the training images
x_test, y_test = train.to_device(test_set, dev, stats)
print(f"{len(train_set.labels)} training and {len(test_set.labels)} test images of Fashion-MNIST "
      f"{tuple(train_set.images.shape[1:])}")

# %% [markdown]
# ## 1. Masks: a coin for every sample, every unit, every pass
#
# In training, a dropout layer multiplies its input $x$ elementwise by a
# random mask $m$ of zeros and ones, each entry drawn independently:
# $m = 1$ (keep) with probability $q$, $m = 0$ (drop) with probability $p$.
# A new mask is drawn for every sample of the batch and for every forward
# pass. The picture shows two passes of PyTorch's `nn.Dropout(p=0.3)` over a
# batch of eight samples with 32 units each; a dark cell is a dropped unit.

# %% mystnb={"image": {"alt": "Two black-and-white grids side by side, one per forward pass of nn.Dropout with p = 0.3 over 8 samples (rows) and 32 units (columns); dark cells are dropped units, scattered independently and differently in the two passes."}}
p = 0.3
q = 1 - p
repro.seed_everything(0)
layer = nn.Dropout(p).train()
ones = torch.ones(8, 32)
passes = [layer(ones) != 0 for _ in range(2)]

with plots.style():
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.6))
    for k, (ax, kept) in enumerate(zip(axes, passes), start=1):
        plots.figure(f"pass {k}: new coins for every cell", "unit", "sample", ax=ax)
        ax.imshow(kept.numpy(), cmap="gray", vmin=0, vmax=1, aspect="auto")
        ax.grid(False)
    fig.suptitle(f"nn.Dropout(p={p}): each sample and unit is dropped independently, anew each pass",
                 fontweight="bold")
    fig.tight_layout()
plt.show()

# %% [markdown]
# If every coin is independent, two masks agree on a given cell with
# probability $p^2 + q^2$: both drop or both keep. That holds between two
# passes and between two samples of one batch alike. We measure it on a large
# batch.

# %%
big = torch.ones(N_ELEM // 100, 100)
mask_a, mask_b = (layer(big) != 0 for _ in range(2))
agree_passes = (mask_a == mask_b).float().mean().item()
agree_samples = (mask_a[1:] == mask_a[:-1]).float().mean().item()
expected_agreement = p**2 + q**2
print(f"agreement between two passes:            {agree_passes:.4f}")
print(f"agreement between neighbouring samples:  {agree_samples:.4f}")
print(f"independent coins predict p^2 + q^2 =    {expected_agreement:.4f}")

# %% tags=["hide-cell"]
# Check: both agreements are p^2 + q^2 (a shared mask would give 1).
se_agree = math.sqrt(expected_agreement * (1 - expected_agreement) / big.numel())
assert abs(agree_passes - expected_agreement) < 5 * se_agree, (agree_passes, expected_agreement)
assert abs(agree_samples - expected_agreement) < 5 * se_agree, (agree_samples, expected_agreement)

# %% [markdown]
# ### Written from scratch, compared with `nn.Dropout`
#
# `droplab.dropout.dropout` is the whole operation in a few lines: draw the
# mask with `torch.bernoulli`, multiply, divide by $q$. We feed it and
# `nn.Dropout` the same input, with $\mathrm{E}[x] = 1$ and
# $\mathrm{Var}[x] = 1$, and compare the fraction of units dropped and the
# mean and variance of the output. The masks come from their own random
# stream (`D.mask_seed`): drawing inputs and masks from one stream seeded
# twice with the same number makes them correlated, a trap the library's
# docstring describes.

# %%
repro.seed_everything(1)
x = torch.randn(N_ELEM // 100, 100, dtype=torch.float64) + 1.0  # E[x] = 1, Var[x] = 1
ours = D.dropout(x, p, generator=torch.Generator().manual_seed(D.mask_seed(1)))
torch.manual_seed(D.mask_seed(2))
theirs = nn.Dropout(p).train()(x)
eq6 = D.expected_output_variance(1.0, 1.0, p)  # Kim et al. Eq. 6 with Var[x] = E[x] = 1

metrics.styled(pd.DataFrame([{"": name, "dropped": f"{(y == 0).double().mean().item():.4f}",
                              "mean": f"{y.mean().item():.4f}", "variance": f"{y.var().item():.4f}"}
                             for name, y in (("droplab", ours), ("nn.Dropout", theirs))]
                            + [{"": "expected (p, E[x], Kim et al.'s Eq. 6)", "dropped": f"{p:.4f}", "mean": f"{1.0:.4f}",
                                "variance": f"{eq6:.4f}"}]),
               f"droplab's dropout beside nn.Dropout (p = {p}, E[x] = Var[x] = 1)")

# %% [markdown]
# Both implementations drop a fraction $p$, keep the mean and have the
# variance of Eq. {eq}`eq-dropout-variance` (derived in section 3); the kept
# units are exactly $x/q$; in evaluation mode both are the identity, bit for
# bit.

# %% tags=["hide-cell"]
# Check: rate, mean and variance within five standard errors; kept units x/q; eval is the identity.
n = x.numel()
for y in (ours, theirs):
    se_var = math.sqrt((((y - y.mean()) ** 4).mean().item() - y.var().item() ** 2) / n)
    assert abs((y == 0).double().mean().item() - p) < 5 * math.sqrt(p * q / n)
    assert abs(y.mean().item() - 1.0) < 5 * math.sqrt(eq6 / n)
    assert abs(y.var().item() - eq6) < 5 * se_var, (y.var().item(), eq6, se_var)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / q)
assert torch.equal(D.dropout(x, p, training=False), x)
assert torch.equal(nn.Dropout(p).eval()(x), x)

# %% [markdown]
# ## 2. Inverted or classic scaling: where the factor goes
#
# A dropped unit contributes nothing, so in training the layer's output is
# on average $q$ times its input. Something must compensate, and there are
# two places to do it:
#
# | rule | training | inference | used by |
# |---|---|---|---|
# | inverted | $m\,x / q$ | $x$ | PyTorch, Keras, {cite:t}`kim2023dropout` ({prf:ref}`def-dropout`) |
# | classic | $m\,x$ | $q\,x$ | the original paper {cite:p}`srivastava2014dropout`, as scaled weights |
# | forgotten | $m\,x$ | $x$ | a hand-written dropout with a bug |
#
# ```{prf:definition} Inverted dropout
# :label: def-dropout
#
# Inverted dropout with drop probability $p$ (keep probability $q = 1 - p$)
# maps a feature $x$ to $m\,x/q$ in training, with a fresh
# $m \sim \mathrm{Bernoulli}(q)$ for every unit, every sample and every pass,
# and to $x$ itself at inference.
# ```
#
# Kim et al. state the same rule as their Definition 1, with their $p$ for
# our keep probability $q$.
#
# Both correct rules give the same expected activation in training and at
# inference. The factor of the classic rule is the **keep** probability $q$.
# Folk explanations slip here in two different ways. A blog post on
# where to add dropout says that at test time every output is scaled down by
# the dropout *rate*, and a Q&A answer on dropout and BN says the same of the
# weights: the factor is wrong, since a test-time factor, where one is used,
# is $q = 1-p$, not $p$. An interview-preparation Q&A names the right factor,
# the keep probability, but says PyTorch applies it when the model is
# switched to evaluation mode: the place is wrong, since in PyTorch
# (measured below) and in Keras (by its documentation) nothing at all is
# scaled at test time; the scaling happens in training. At $p = 0.5$ the rate
# and the keep probability coincide, which may be why the first slip
# survives. We measure all four rules at $p = 0.2$, where they do not.

# %%
p2 = 0.2
q2 = 1 - p2
g = torch.Generator().manual_seed(D.mask_seed(3))
rules = {
    "inverted": (D.dropout(x, p2, scaling="inverted", generator=g), D.dropout(x, p2, training=False)),
    "classic": (D.dropout(x, p2, scaling="classic", generator=g),
                D.dropout(x, p2, training=False, scaling="classic")),
    "forgotten": (D.dropout(x, p2, scaling="none", generator=g),
                  D.dropout(x, p2, training=False, scaling="none")),
    "'scaled by the rate'": (D.dropout(x, p2, scaling="classic", generator=g), x * p2),
}
ratios = {name: test.mean().item() / train_out.mean().item() for name, (train_out, test) in rules.items()}
metrics.styled(pd.DataFrame([{"rule": name, "mean in training": f"{train_out.mean().item():.4f}",
                              "mean at inference": f"{test.mean().item():.4f}",
                              "inference / training": f"{ratios[name]:.4f}"}
                             for name, (train_out, test) in rules.items()]),
               f"Four scaling rules (p = {p2}, q = {q2}, E[x] = {x.mean().item():.4f})")

# %% [markdown]
# The two correct rules keep the expected activation (ratio 1); the
# forgotten scaling inflates inference by $1/q$; and scaling by the rate
# shrinks it by $p/q$, a factor of four at $p = 0.2$.

# %% tags=["hide-cell"]
# Check: the four ratios are 1, 1, 1/q and p/q (five standard errors of the mean).
rel_se = 5 * math.sqrt(D.expected_output_variance(1.0, 1.0, p2) / n) / x.mean().item()
assert abs(ratios["inverted"] - 1) < rel_se and abs(ratios["classic"] - 1) < rel_se
assert abs(ratios["forgotten"] - 1 / q2) < rel_se / q2
assert abs(ratios["'scaled by the rate'"] - p2 / q2) < rel_se

# %% [markdown]
# PyTorch's own layer makes the point directly: in training the kept units
# are divided by $q$, and in evaluation mode the input passes through
# untouched; there is no factor at all.

# %%
torch.manual_seed(D.mask_seed(4))
train_out = nn.Dropout(p2).train()(x)
kept = train_out != 0
print(f"training: kept units / input = {(train_out[kept] / x[kept]).mean().item():.6f}  (1/q = {1 / q2:.6f})")
print(f"evaluation: output identical to input: {torch.equal(nn.Dropout(p2).eval()(x), x)}")

# %% tags=["hide-cell"]
# Check: kept units are exactly x/q in training; eval mode is the identity.
assert torch.allclose(train_out[kept] / x[kept], torch.full_like(x[kept], 1 / q2))
assert torch.equal(nn.Dropout(p2).eval()(x), x)

# %% [markdown]
# ### What a forgotten scaling costs
#
# Now the bug in a trained network. We train the same MLP
# (784–256–256–10, dropout after each hidden ReLU) at
# $p \in \{0.2, 0.5, 0.8\}$ (only $p = 0.5$ at smoke scale), with a dropout
# that multiplies by the mask and never rescales
# (`D.replace_dropout(model, "none")`). At inference every dropout layer then
# passes $1/q$ times the activation the next layer saw on average in
# training. We measure that factor at the first dropout layer, then the test
# loss and accuracy of the buggy network and of the same weights repaired by
# multiplying by $q$ at inference (switching the layers to the classic rule).

# %%
loss = lambda out: F.cross_entropy(out, y_test).item()  # mean test cross-entropy of logits
correct = lambda out, y=y_test: (out.argmax(1) == y).float()  # 1 where the predicted class is right
BUG_RATES = scale.pick(smoke=(0.5,), class_=(0.2, 0.5, 0.8), paper=(0.2, 0.5, 0.8))
bug = {}
for p_bug in tqdm(BUG_RATES, desc="forgotten scaling", disable=scale.current() == "smoke"):
    repro.seed_everything(0)
    net = models.MLP(hidden=HIDDEN, p=p_bug, dropout_at="hidden")
    surgery.replace_dropout(net, "none")
    train.fit(net, train_set, None, EPOCHS, seed=0, progress=False, **RECIPE)
    first = net.layers[:4]  # Flatten, Linear, ReLU, Dropout
    with torch.no_grad():
        factor = first.eval()(x_test).mean().item() / first.train()(x_test).mean().item()
    net.eval()
    buggy = train.predict(net, test_set)
    surgery.set_scaling(net, "classic")
    bug[p_bug] = {"factor": factor, "buggy": buggy, "repaired": train.predict(net, test_set)}

metrics.styled(pd.DataFrame([{"p": f"{p_bug:.1f}", "1/q": f"{1 / (1 - p_bug):.3f}",
                              "measured factor": f"{r['factor']:.3f}", "test loss, buggy": f"{loss(r['buggy']):.3f}",
                              "test loss, repaired": f"{loss(r['repaired']):.3f}",
                              "accuracy, buggy": f"{correct(r['buggy']).mean():.4f}",
                              "accuracy, repaired": f"{correct(r['repaired']).mean():.4f}"}
                             for p_bug, r in bug.items()]),
               "A forgotten scaling: the factor at the first dropout layer, and the test loss and accuracy")

# %%
ce = {p_bug: {k: F.cross_entropy(r[k], y_test, reduction="none") for k in ("buggy", "repaired")}
      for p_bug, r in bug.items()}
extra_loss = {p_bug: metrics.mean_se(c["buggy"] - c["repaired"]) for p_bug, c in ce.items()}  # per image, paired
acc_lost = {p_bug: metrics.mean_se(correct(r["repaired"]) - correct(r["buggy"])) for p_bug, r in bug.items()}
metrics.styled(pd.DataFrame([{"p": f"{p_bug:.1f}", "extra test loss": f"{extra_loss[p_bug][0]:+.3f}",
                              "SE": f"{extra_loss[p_bug][1]:.3f}",
                              "accuracy lost (points)": f"{100 * acc_lost[p_bug][0]:+.2f}",
                              "SE (points)": f"{100 * acc_lost[p_bug][1]:.2f}"} for p_bug in BUG_RATES]),
               "What the forgotten scaling costs per test image: buggy minus repaired, with standard errors")

# %% [markdown]
# The activations are off by $1/q$, as predicted. What follows is subtler
# than a collapse. A ReLU network without biases is positively homogeneous:
# scaling a layer's input by a constant scales the logits by the same
# constant and leaves the predicted class alone. The biases break the
# homogeneity only a little, so at small $p$ the accuracy barely moves while
# the logits grow and the network turns overconfident: the test loss
# (cross-entropy) of the buggy network is above the repaired one, by a
# margin that grows with $p$. At large $p$ the factor $1/q$ compounds over
# the two dropout layers and the accuracy falls too (checked at class
# scale, where all three rates are trained).

# %% tags=["hide-cell"]
# Check: factor 1/q within 3%; extra loss > 5 SE, growing with p; accuracy lost at p = 0.8 only.
for p_bug, r in bug.items():
    assert abs(r["factor"] * (1 - p_bug) - 1) < 0.03, (p_bug, r["factor"])
assert extra_loss[0.5][0] > 5 * extra_loss[0.5][1]
if scale.current() != "smoke":  # only p = 0.5 is trained at smoke scale
    assert all(m > 5 * se for m, se in extra_loss.values()), extra_loss
    assert extra_loss[0.2][0] < extra_loss[0.5][0] < extra_loss[0.8][0], extra_loss
    assert abs(acc_lost[0.2][0]) < max(0.01, 3 * acc_lost[0.2][1]), acc_lost[0.2]
    assert acc_lost[0.8][0] > 5 * acc_lost[0.8][1], acc_lost[0.8]
else:
    print("smoke scale: the checks across rates run at class scale, where p = 0.2 and 0.8 are trained")

# %% [markdown]
# ## 3. The mean is kept, the variance is not
#
# Inverted dropout computes $y = m\,x/q$ with $m \sim \mathrm{Bernoulli}(q)$
# independent of $x$. Since $\mathrm{E}[m] = \mathrm{E}[m^2] = q$,
#
# $$
# \mathrm{E}[y] = \frac{\mathrm{E}[m]}{q}\,\mathrm{E}[x] = \mathrm{E}[x],
# \qquad
# \mathrm{Var}[y] = \frac{\mathrm{E}[m^2]}{q^2}\,\mathrm{E}[x^2] - \mathrm{E}[x]^2
# = \frac{1}{q}\,\mathrm{Var}[x] + \frac{1-q}{q}\,\mathrm{E}[x]^2 .
# $$ (eq-dropout-variance)
#
# The right-hand formula of Eq. {eq}`eq-dropout-variance` is Kim et al.'s
# Eq. 6 {cite:p}`kim2023dropout`, following {cite:t}`li2019understanding`,
# with their keep probability $p$ written as $q$ here. At inference dropout is the identity, so the variance is
# $\mathrm{Var}[x]$: the two phases agree on the mean and disagree on the
# variance. The ratio of the two is the *inconsistency ratio* of Kim et al.
# ({prf:ref}`def-delta`, chapter 2),
#
# $$
# \Delta = \frac{\mathrm{Var}[y_\text{test}]}{\mathrm{Var}[y_\text{train}]}
# = \frac{\mathrm{Var}[x]}{\mathrm{Var}[x]/q + (1-q)\,\mathrm{E}[x]^2/q} < 1
# \quad\text{for } q < 1 .
# $$ (eq-dropout-ratio)
#
# (Kim et al.'s Eqs. 3 and 6 together.)
#
# We measure both sides over a grid of keep probabilities and input means,
# with $\mathrm{Var}[x] = 1$, drawing `N_ELEM` values per point; $\Delta$ is
# measured with `droplab.variance.inconsistency_ratio`, the tool chapters 2–4
# use on whole networks.

# %%
P_GRID = [round(0.1 * k, 1) for k in range(1, 10)]  # drop probabilities; q = 1 - p
MEANS = (0.0, 1.0, 2.0)
repro.seed_everything(3)
mask_stream = torch.Generator().manual_seed(D.mask_seed(3))
grid = []
for mu in MEANS:
    for p_ in P_GRID:
        xg = torch.randn(N_ELEM // 100, 100, dtype=torch.float64) + mu
        yg = D.dropout(xg, p_, generator=mask_stream)
        centred = yg - yg.mean()
        grid.append({"mu": mu, "p": p_, "mean": yg.mean().item(), "var": yg.var().item(),
                         "se_var": math.sqrt(((centred**4).mean().item() - yg.var().item() ** 2) / yg.numel()),
                         "formula": D.expected_output_variance(1.0, mu, p_),
                         "delta": variance.inconsistency_ratio(nn.Dropout(p_), xg, seed=int(10 * p_)),
                         "delta_formula": variance.dropout_ratio(1.0, mu, p_)})
print(f"{len(grid)} points; worst |measured variance - formula| / SE = "
      f"{max(abs(r['var'] - r['formula']) / r['se_var'] for r in grid):.2f}")

# %% mystnb={"image": {"alt": "Two panels against the keep probability q: left, the training-mode variance of dropout's output on a log scale, right, the inconsistency ratio Delta; one series per input mean E[x] = 0, 1, 2, measured markers on the analytic curves of Kim et al.'s Eq. 6; the variance grows and Delta falls below 1 as q falls and as E[x] grows."}}
with plots.style():
    fig, (ax_var, ax_delta) = plt.subplots(1, 2, figsize=(11, 4.2))
    plots.figure("Training variance follows Kim et al.'s Eq. 6", "keep probability q = 1 − p",
                 "Var[dropout(x)] in training", ax=ax_var, yscale="log")
    plots.figure("Δ < 1 for every q < 1, lower for larger E[x]", "keep probability q = 1 − p",
                 "inconsistency ratio Δ = Var_test / Var_train", ax=ax_delta)
    for mu in MEANS:
        rows = [r for r in grid if r["mu"] == mu]
        qs = [1 - r["p"] for r in rows]
        plots.measured_vs_analytic(ax_var, qs, [r["var"] for r in rows],
                                   lambda qq, mu=mu: 1 / qq + (1 - qq) / qq * mu**2, label=f"E[x] = {mu:g}")
        plots.measured_vs_analytic(ax_delta, qs, [r["delta"] for r in rows],
                                   lambda qq, mu=mu: 1 / (1 / qq + (1 - qq) / qq * mu**2),
                                   label=f"E[x] = {mu:g}")
    fig.tight_layout()
plt.show()

# %% tags=["hide-cell"]
# Check: mean, variance and Δ match their formulas (five standard errors); Δ < 1 everywhere.
for r in grid:
    assert abs(r["mean"] - r["mu"]) < 5 * math.sqrt(r["formula"] / N_ELEM), r
    assert abs(r["var"] - r["formula"]) < 5 * r["se_var"], r
    assert abs(r["delta"] / r["delta_formula"] - 1) < 5 * r["se_var"] / r["var"] + 5 / math.sqrt(N_ELEM), r
    assert r["delta"] < 1, r

# %% [markdown]
# The inflation has two parts: $1/q$ on the variance of the input, and a
# term in $\mathrm{E}[x]^2$ that vanishes only for centred inputs. After a
# ReLU the inputs are never centred, which is why dropout placed in front of
# a batch normalization layer hands it a different variance in training than
# at inference. Chapter 2 follows that shift through a network.
#
# ## 4. Does it regularize?
#
# The reason to use dropout at all is generalization. We train the MLP on a
# small subset of Fashion-MNIST, without data augmentation or weight decay
# so that dropout is the only regularizer, at several drop rates and seeds.
# For each run we record the training and test accuracy per epoch, and at
# the end the *generalization gap*: accuracy on the training images minus
# accuracy on the test images, both measured in evaluation mode.

# %%
RATES = scale.pick(smoke=(0.0, 0.5), class_=(0.0, 0.2, 0.5, 0.8), paper=(0.0, 0.1, 0.2, 0.3, 0.5, 0.8))
SEEDS = scale.pick(smoke=2, class_=4, paper=5)
nets = {p_: (lambda p_=p_: models.MLP(hidden=HIDDEN, p=p_, dropout_at="hidden" if p_ > 0 else None)) for p_ in RATES}
trained = train.fit_each(nets, train_set, test_set, EPOCHS, range(SEEDS), progress=scale.current() != "smoke",
                         desc="rates x seeds", **RECIPE)
runs = {key: {"model": net, "history": hist, "train_acc": train.evaluate(net, train_set)[1], "test_acc": hist.final_test_acc}
        for key, (net, hist) in trained.items()}
summary = {p_: {k: metrics.mean_ci95([runs[p_, s][k] for s in range(SEEDS)]) for k in ("train_acc", "test_acc")}
           for p_ in RATES}
gaps = {p_: [runs[p_, s]["train_acc"] - runs[p_, s]["test_acc"] for s in range(SEEDS)] for p_ in RATES}
metrics.styled(pd.DataFrame([{"p": f"{p_:.1f}",
                              "train accuracy, eval mode (%)": metrics.pm(*summary[p_]["train_acc"]),
                              "test accuracy (%)": metrics.pm(*summary[p_]["test_acc"]),
                              "gap (points)": metrics.pm(*metrics.mean_ci95(gaps[p_]))} for p_ in RATES]),
               f"Accuracy and generalization gap by drop rate ({SEEDS} seeds, mean ± 95 % CI)")

# %% [markdown]
# The curves below average the seeds. The training accuracy that `fit` logs
# is measured *with dropout on*, on the thinned networks it is training; it
# therefore understates what the full network does on the same images (the
# end-of-training numbers in the table are in evaluation mode).

# %% mystnb={"image": {"alt": "Accuracy against epoch for the MLP at each drop rate: dashed lines are the training accuracy logged with dropout on, solid lines the test accuracy; higher rates fit the training set more slowly."}}
with plots.style():
    fig, ax = plots.figure("Dropout slows the fit to the training set", "epoch", "accuracy")
    epochs_axis = np.arange(1, EPOCHS + 1)
    for k, p_ in enumerate(RATES):
        colour = plots.PALETTE[k]
        hist_train = np.mean([runs[p_, s]["history"].train_acc for s in range(SEEDS)], axis=0)
        hist_test = np.mean([runs[p_, s]["history"].test_acc for s in range(SEEDS)], axis=0)
        ax.plot(epochs_axis, hist_train, "--", color=colour,
                label=f"p = {p_}: train (logged in training mode)")
        ax.plot(epochs_axis, hist_test, "-", color=colour, label=f"p = {p_}: test")
    ax.legend(ncol=2, fontsize=8)
plt.show()

# %% mystnb={"image": {"alt": "Bar chart of the generalization gap (train minus test accuracy, in points) against the drop rate p, with 95 percent confidence intervals over seeds; the gap shrinks as p grows."}}
with plots.style():
    fig, ax = plots.figure("Dropout shrinks the gap between train and test accuracy", "drop probability p",
                           "train − test accuracy (points)")
    gap_stats = [metrics.mean_ci95([100 * g for g in gaps[p_]]) for p_ in RATES]
    plots.bars_with_ci(ax, [f"{p_}" for p_ in RATES], [m for m, _ in gap_stats], [c for _, c in gap_stats])
plt.show()

# %% [markdown]
# Dropout slows the fit to the training set and shrinks the gap, more so
# at higher rates: at $p = 0.5$ the training accuracy and the gap of
# *every* seed are below those of every seed without dropout.
#
# The effect on test accuracy is much smaller than the effect on the gap
# and comparable to the spread between seeds: the table shows it as
# mean ± 95% CI over seeds, and whether the intervals separate depends on
# the scale (with the two seeds of smoke scale they cannot). A high rate
# costs accuracy outright: at $p = 0.8$ the network no longer fits the
# training set in this budget (checked at class scale, where $p = 0.8$ is
# in the sweep).

# %% tags=["hide-cell"]
# Check: p = 0.5 beats p = 0 on the gap in every seed; the mean gap falls with p.
assert max(gaps[0.5]) < min(gaps[0.0]), gaps
assert max(runs[0.5, s]["train_acc"] for s in range(SEEDS)) < min(runs[0.0, s]["train_acc"] for s in range(SEEDS))
trend = [np.mean(gaps[r]) for r in (0.0, 0.2, 0.5, 0.8) if r in RATES]
assert all(b < a for a, b in itertools.pairwise(trend)), trend
if 0.8 in RATES:
    test_effect = abs(summary[0.5]["test_acc"][0] - summary[0.0]["test_acc"][0])
    assert test_effect < np.mean(gaps[0.0]) - np.mean(gaps[0.5]), (test_effect, gaps)
    assert summary[0.8]["test_acc"][0] < summary[0.0]["test_acc"][0] - 0.02, summary
    assert summary[0.8]["train_acc"][0] < summary[0.0]["train_acc"][0] - 0.05, summary
else:
    print("smoke scale: p = 0.8 is not in the sweep; the checks on test accuracy run at class scale")

# %% [markdown]
# ## 5. The ensemble view: weight scaling against averaging
#
# Every mask picks a *sub-network*; training with dropout trains all of them
# at once with shared weights. The ideal prediction would average the
# predictions of all sub-networks. The inference rule instead runs the one
# full network (with the factor $q$ folded in, or, for inverted dropout,
# already folded in during training). {cite:t}`srivastava2014dropout` call
# this *weight scaling* and compare it with a Monte Carlo (MC) average over
# sampled masks; they report that on MNIST the MC average needed about fifty
# samples to match it (quoted, their Section 7.5).
#
# For a *single* linear layer after the dropout, weight scaling is exact:
# $\mathrm{E}_m[W(m\,x/q)] = Wx$. So for an MLP with one dropout directly
# before its output layer, the MC average of the logits converges to the
# eval-mode logits, and its error shrinks like $\sigma/\sqrt{T}$ with the
# number of passes $T$ (more precisely, the expected absolute error of a mean
# of $T$ draws with standard deviation $\sigma$ is
# $\sqrt{2/\pi}\,\sigma/\sqrt{T}$ for a normal average). With dropout in
# every hidden layer, ReLUs sit between the masks and the output, the rule
# is only an approximation, and the error should stop shrinking at the size
# of that approximation. We measure both: the network with dropout in every
# hidden layer is the $p = 0.5$, seed 0 network of section 4; the other has
# one dropout before the output layer.

# %%
ens = {"every hidden layer": runs[0.5, 0]["model"]}
repro.seed_everything(0)
ens["before the output layer only"] = models.MLP(hidden=HIDDEN, p=0.5, dropout_at="after_last_bn")
train.fit(ens["before the output layer only"], train_set, None, EPOCHS, seed=0, progress=False, **RECIPE)
y_ens = y_test[:N_ENS]
mc_logits = {name: D.mc_outputs(net, x_test[:N_ENS], T_MAX, seed=1) for name, net in ens.items()}
ws_logits = {name: train.predict(net, test_set)[:N_ENS] for name, net in ens.items()}
T_GRID = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= T_MAX]
gap_T = {name: [(mc_logits[name][:t].mean(0) - ws_logits[name]).abs().mean().item() for t in T_GRID]
         for name in ens}
noise_only = {name: math.sqrt(2 / math.pi) * mc_logits[name].std(0).mean().item() for name in ens}
metrics.styled(pd.DataFrame([{"dropout": name,
                              **{f"T = {t}": f"{g:.3f} (noise {noise_only[name] / math.sqrt(t):.3f})"
                                 for t, g in zip(T_GRID, gap_T[name]) if t in (1, 10, T_GRID[-1])}}
                             for name in ens]),
               "Mean |MC average of T passes − weight scaling| of the logits, beside the sampling noise alone")

# %% mystnb={"image": {"alt": "Log-log plot of the mean absolute difference between MC-averaged logits and eval-mode logits against the number of MC passes T, for dropout before the output layer only and for dropout in every hidden layer, each beside its noise-only curve c over root T; the first follows its curve, the second levels off above it."}}
with plots.style():
    fig, ax = plots.figure("MC averages reach weight scaling only where the rule is exact",
                           "MC passes T", "mean |MC-averaged logit − eval-mode logit|",
                           xscale="log", yscale="log")
    for name in ens:
        plots.measured_vs_analytic(ax, T_GRID, gap_T[name], lambda t, c=noise_only[name]: c / np.sqrt(t),
                                   label=f"dropout {name}")
plt.show()

# %% [markdown]
# With one dropout before the output layer the error follows the noise-only
# curve all the way down. With dropout in every hidden layer it leaves the
# curve and levels off: the weight-scaled network is not the average of the
# sub-networks, only close to it.

# %% tags=["hide-cell"]
# Check: single dropout within 15% of the noise curve; every-layer dropout > 25% above it at the largest T.
name_exact, name_approx = "before the output layer only", "every hidden layer"
for t, g in zip(T_GRID, gap_T[name_exact]):
    assert abs(g / (noise_only[name_exact] / math.sqrt(t)) - 1) < 0.15, (t, g)
assert gap_T[name_approx][-1] > 1.25 * noise_only[name_approx] / math.sqrt(T_GRID[-1]), gap_T[name_approx]

# %% [markdown]
# How much does the approximation matter for the predictions themselves?
# We compare the class predicted by the eval-mode network with the class
# predicted by the MC average of the softmax probabilities.

# %%
probs_approx = F.softmax(mc_logits[name_approx], dim=-1)
ws_correct = correct(ws_logits[name_approx], y_ens)
single_correct = torch.stack([correct(probs_approx[t], y_ens) for t in range(T_MAX)]).mean(0)  # per image
mc_correct = correct(probs_approx.mean(0), y_ens)
acc_diff = metrics.mean_se(mc_correct - ws_correct)
single_cost = metrics.mean_se(ws_correct - single_correct)
mc_means = {t: probs_approx[:t].mean(0) for t in sorted({1, 10, T_MAX})}
ws_class = ws_logits[name_approx].argmax(1)
metrics.styled(pd.DataFrame(
    [{"prediction": "weight scaling", "test accuracy (%)": f"{100 * ws_correct.mean():.2f}",
      "same class as weight scaling (%)": ""}]
    + [{"prediction": f"MC average of T = {t}", "test accuracy (%)": f"{100 * correct(m, y_ens).mean():.2f}",
        "same class as weight scaling (%)": f"{100 * (m.argmax(1) == ws_class).float().mean().item():.1f}"}
       for t, m in mc_means.items()]
    + [{"prediction": f"one sampled sub-network (averaged over the {T_MAX} passes)",
        "test accuracy (%)": f"{100 * single_correct.mean():.2f}", "same class as weight scaling (%)": ""}]),
    f"Dropout in every hidden layer: weight scaling against MC averages ({N_ENS} test images)")

# %% [markdown]
# A single sampled sub-network is less accurate than the full network; the
# average of many agrees with weight scaling on almost every image, and the
# two accuracies are close. That the full network beats the average
# sub-network by more than five standard errors is checked at class scale.

# %%
agree_max = (probs_approx.mean(0).argmax(1) == ws_logits[name_approx].argmax(1)).float().mean().item()
print(f"accuracy MC − weight scaling: {100 * acc_diff[0]:+.2f} points (SE {100 * acc_diff[1]:.2f})")
print(f"full network − one sub-network: {100 * single_cost[0]:+.2f} points (SE {100 * single_cost[1]:.2f})")

# %% tags=["hide-cell"]
# Check: MC and weight scaling agree on 95% of images, accuracies within 3 SE or a point.
assert agree_max >= 0.95, agree_max
assert abs(acc_diff[0]) < max(3 * acc_diff[1], 0.01), acc_diff
if scale.current() != "smoke":  # at smoke scale the gap is a couple of standard errors only
    assert single_cost[0] > 5 * single_cost[1], single_cost

# %% [markdown]
# ## 6. MC dropout: uncertainty from the spread of the sub-networks
#
# {cite:t}`gal2016dropout` read dropout at inference as approximate Bayesian
# inference: keep the masks on, run $T$ stochastic passes, and use the spread
# of the predictions as a measure of the model's uncertainty. A standard
# summary is the *predictive entropy* of the averaged probabilities,
# $H = -\sum_k \bar p_k \log \bar p_k$ with $\bar p = \frac1T\sum_t p_t$,
# which is 0 for a confident prediction and at most $\log 10$ nats for ten
# classes.
#
# We compare it on the test images with three kinds of inputs the network
# never saw: uniform noise, the test images with inverted grey levels, and
# the test images rotated by 90°. The network is the $p = 0.5$ MLP from
# section 4. As a control we also report the entropy of the ordinary
# (eval-mode) softmax, and the share of the entropy that comes from
# disagreement between masks (the mutual information, `D.mutual_information`).

# %%
T_MC = scale.pick(smoke=20, class_=50, paper=100)
g_ood = torch.Generator().manual_seed(5)
inputs = {
    "test images": test_set.images,
    "uniform noise": torch.randint(0, 256, test_set.images.shape, generator=g_ood, dtype=torch.uint8),
    "inverted": 255 - test_set.images,
    "rotated 90°": torch.rot90(test_set.images, 1, dims=(2, 3)),
}
mc_model = runs[0.5, 0]["model"]
entropy = {}
for name, images in inputs.items():
    xs = train.to_device((images, test_set.labels), dev, stats)[0]
    samples = D.mc_predict(mc_model, xs, T_MC, seed=2)
    entropy[name] = {"mc": D.predictive_entropy(samples.mean(0)), "mi": D.mutual_information(samples),
                         "det": D.predictive_entropy(F.softmax(train.predict(mc_model, (images, test_set.labels)),
                                                            -1))}
print(f"maximum possible entropy: log 10 = {math.log(10):.3f} nats")
metrics.styled(pd.DataFrame([{"input": name, "MC entropy": f"{e['mc'].mean():.3f}",
                              "mutual information": f"{e['mi'].mean():.3f}",
                              "eval-mode entropy": f"{e['det'].mean():.3f}",
                              "AUROC vs test (MC)": f"{metrics.auroc(entropy['test images']['mc'], e['mc']):.3f}"}
                             for name, e in entropy.items()]),
               f"Mean entropies (nats) of the p = 0.5 MLP, T = {T_MC}; AUROC: P(input's MC entropy > a test image's)")

# %% mystnb={"image": {"alt": "Histograms of the predictive entropy of the MC average for the test images, uniform noise, inverted images and images rotated by 90 degrees, with a dashed line at the maximum log 10; the shifted inputs have higher entropy than the test images."}}
with plots.style():
    fig, ax = plots.figure("MC dropout is less certain on inputs unlike its training images",
                           "predictive entropy of the MC average (nats)", "density")
    bins = np.linspace(0, math.log(10), 31)
    for name, e in entropy.items():
        ax.hist(e["mc"].cpu().numpy(), bins=bins, density=True, histtype="step", linewidth=1.8, label=name)
    ax.axvline(math.log(10), color="black", linestyle="--", linewidth=1.2, label="maximum, log 10 (analytic)")
    ax.legend()
plt.show()

# %% [markdown]
# On all three shifted inputs the MC entropy is higher than on the test
# images, and a threshold on it separates them from the test images better
# than chance (the AUROC column: the probability that a shifted input has a
# higher entropy than a test image). The other two columns say where the
# entropy comes from: the mutual information is the part due to
# disagreement between sub-networks, the eval-mode entropy is what a single
# deterministic pass already shows. How much MC adds over that single pass
# depends on the network and on the kind of shift, so the book claims no
# winner between them; compare the columns in your run.

# %% tags=["hide-cell"]
# Check: each shifted input's MC entropy is above the test images' (5 SE), AUROC > 0.6.
for name, e in entropy.items():
    if name == "test images":
        continue
    base = entropy["test images"]["mc"]
    se = math.sqrt(e["mc"].var().item() / len(e["mc"]) + base.var().item() / len(base))
    assert e["mc"].mean().item() - base.mean().item() > 5 * se, name
    assert metrics.auroc(base, e["mc"]) > 0.6, name

# %% [markdown]
# ### The BN trap: `model.train()` switches more than dropout
#
# The tempting way to keep dropout on at inference is `model.train()`. In a
# network with batch normalization that also switches every BN layer to
# training behaviour: it normalizes with the statistics of the current
# batch instead of the running averages learned in training, and it updates
# those running averages as a side effect. The right way turns on the
# dropout layers only (`D.enable_dropout`, or the `D.mc_dropout` context
# that `D.mc_predict` uses). We train the same MLP with BN after each hidden
# linear layer and look at both symptoms.

# %%
repro.seed_everything(0)
bn_model = models.MLP(hidden=HIDDEN, p=0.5, dropout_at="hidden", batch_norm=True)
train.fit(bn_model, train_set, None, EPOCHS, seed=0, progress=False, **RECIPE)
print(bn_model)
x_noise = train.to_device((inputs["uniform noise"], test_set.labels), dev, stats)[0]

# %% [markdown]
# First symptom: the running statistics. We run MC dropout over the noise
# images ($T$ passes, as for the entropy above) the tempting way on a copy of
# the network, and the right way on the network itself, then use both
# networks for ordinary predictions on the test images.

# %%
before = copy.deepcopy(bn_model.state_dict())
trapped = copy.deepcopy(bn_model).train()
with torch.no_grad():
    noise_passes = [trapped(x_noise) for _ in range(T_MC)]  # MC dropout with model.train()
D.mc_predict(bn_model, x_noise, T_MC, seed=3)  # MC dropout with only the dropout layers on
running = [k for k in before if k.endswith("running_mean")]
moved = {k: (trapped.state_dict()[k] - before[k]).abs().max().item() for k in running}
print("largest change of a running mean after model.train():", {k: round(v, 3) for k, v in moved.items()})
unchanged = all(torch.equal(v, bn_model.state_dict()[k]) for k, v in before.items())
print(f"after D.mc_predict, every BN buffer unchanged: {unchanged}")
trapped.eval()
deployed_right = correct(train.predict(bn_model, test_set))
deployed_trapped = correct(train.predict(trapped, test_set))
print(f"eval-mode test accuracy afterwards: {100 * deployed_right.mean():.2f}% (right way), "
      f"{100 * deployed_trapped.mean():.2f}% (model.train())")

# %% [markdown]
# Second symptom: the prediction for an image depends on the other images
# in its batch. We run MC dropout on the test images alone, and on the test
# images in one batch with twice as many noise images, both ways.

# %%
mixed = torch.cat([x_test, x_noise, x_noise.flip(0)])
n_test = len(y_test)
T_MIX = scale.pick(smoke=8, class_=20, paper=50)  # the effect is systematic: a few passes show it
trap_alone = correct(D.mc_predict_train_mode(bn_model, x_test, T_MIX, seed=4).mean(0))
trap_mixed = correct(D.mc_predict_train_mode(bn_model, mixed, T_MIX, seed=4).mean(0)[:n_test])
right_alone = correct(D.mc_predict(bn_model, x_test, T_MIX, seed=4).mean(0))
right_mixed = correct(D.mc_predict(bn_model, mixed, T_MIX, seed=4).mean(0)[:n_test])
print(f"model.train():     test accuracy {100 * trap_alone.mean():.2f}% alone, "
      f"{100 * trap_mixed.mean():.2f}% mixed with noise")
print(f"D.enable_dropout:  test accuracy {100 * right_alone.mean():.2f}% alone, "
      f"{100 * right_mixed.mean():.2f}% mixed with noise")

# %% [markdown]
# The tempting way moves the running means, and the network left with them
# loses accuracy afterwards, while the right way leaves every buffer bit for
# bit unchanged; mixing in noise costs the tempting way accuracy on the
# *same* test images, while the right way changes by less than the MC
# sampling noise with these $T$.

# %%
deploy_cost = metrics.mean_se(deployed_right - deployed_trapped)
trap_cost, right_cost = metrics.mean_se(trap_alone - trap_mixed), metrics.mean_se(right_alone - right_mixed)
print(f"accuracy lost by the corrupted running statistics: {100 * deploy_cost[0]:.2f} points "
      f"(SE {100 * deploy_cost[1]:.2f})")
print(f"accuracy lost by mixing: model.train() {100 * trap_cost[0]:.2f} points (SE {100 * trap_cost[1]:.2f}), "
      f"enable_dropout {100 * right_cost[0]:.2f} points (SE {100 * right_cost[1]:.2f})")

# %% tags=["hide-cell"]
# Check: model.train() moves the buffers and costs accuracy (3 SE); the right way moves nothing.
assert all(v > 1e-3 for v in moved.values()), moved
assert unchanged
assert deploy_cost[0] > 3 * deploy_cost[1], deploy_cost
assert trap_cost[0] > 3 * trap_cost[1], trap_cost
assert abs(right_cost[0]) < 0.02, right_cost

# %% [markdown]
# ## 7. Spatial dropout: why convolutional maps need whole-channel masks
#
# In a convolutional feature map, neighbouring activations are computed from
# overlapping patches of the image and tend to be strongly correlated.
# {cite:t}`tompson2015efficient` argued that when they are, element-wise
# dropout does little to regularize the layer, and proposed dropping whole
# channels instead (`nn.Dropout2d`, `D.SpatialDropout`). We measure the
# mechanism behind the argument, how much of a dropped activation its
# neighbours still carry, on the feature maps of a small CNN trained briefly
# on the same images: the output of its second Conv–BN–ReLU stage, 32
# channels of 14×14.

# %%
CNN_EPOCHS = scale.pick(smoke=1, class_=3, paper=5)
N_MAPS = scale.pick(smoke=200, class_=1_000, paper=2_000)  # test images whose feature maps we study
repro.seed_everything(0)
cnn = models.CNN(widths=(16, 32, 64))
train.fit(cnn, train_set, None, CNN_EPOCHS, seed=0, progress=False, **RECIPE)
second_relu = [i for i, m in enumerate(cnn.features) if isinstance(m, nn.ReLU)][1]
with torch.no_grad():
    fmap = cnn.eval().features[: second_relu + 1](x_test[:N_MAPS]).cpu()
centred = fmap - fmap.mean((0, 2, 3), keepdim=True)
neighbour_corr = ((centred[..., :, :-1] * centred[..., :, 1:]).sum() / centred.pow(2).sum()).item()
print(f"feature maps {tuple(fmap.shape)}; "
      f"correlation of horizontally adjacent activations: {neighbour_corr:.3f}")

# %% mystnb={"image": {"alt": "A grid of feature-map images, three rows by four channels: the trained CNN's feature maps, the same after element dropout with p = 0.3 (scattered holes among intact neighbours), and after spatial dropout (whole channels set to zero)."}}
P_SPATIAL = 0.3
repro.seed_everything(6)
image, channels = 0, [0, 1, 2, 3]
rows = {"feature maps": fmap[image, channels],
        f"element dropout, p = {P_SPATIAL}": nn.Dropout(P_SPATIAL)(fmap[image : image + 1])[0, channels],
        f"spatial dropout, p = {P_SPATIAL}": nn.Dropout2d(P_SPATIAL)(fmap[image : image + 1])[0, channels]}
with plots.style():
    fig, axes = plt.subplots(3, len(channels), figsize=(8, 6.4))
    for r, (label, maps) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.imshow(maps[c].numpy(), cmap="viridis", vmin=0, vmax=float(fmap[image, channels].max()))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"channel {channels[c]}" if r == 0 else "", fontsize=9)
        axes[r][0].set_ylabel(label, fontsize=9)
    fig.suptitle("Element dropout leaves holes among intact neighbours;\nspatial dropout removes whole maps",
                 fontweight="bold")
    fig.tight_layout()
plt.show()

# %% [markdown]
# The masks behind the pictures, measured on a tensor of ones the size of
# the feature maps: the spatial mask is constant over every map and drops a
# fraction $p$ of the maps; the element mask drops a fraction $p$ of the
# activations, and the right-hand neighbour of a dropped activation is still
# kept with probability $q$, since the coins are independent.

# %%
ones_maps = torch.ones(N_MAPS, fmap.shape[1], 14, 14)
element_kept = nn.Dropout(P_SPATIAL)(ones_maps) != 0
channel_kept = nn.Dropout2d(P_SPATIAL)(ones_maps) != 0
ours_kept = D.SpatialDropout(P_SPATIAL)(ones_maps) != 0
dropped_here = ~element_kept[..., :, :-1]
neighbour_kept = (element_kept[..., :, 1:] & dropped_here).sum().item() / dropped_here.sum().item()
n_maps = N_MAPS * fmap.shape[1]
print(f"element dropout: {100 * (~element_kept).float().mean():.2f}% of activations dropped; "
      f"right neighbour of a dropped one kept {100 * neighbour_kept:.2f}% (q = {100 * (1 - P_SPATIAL):.0f}%)")
for name, kept in (("nn.Dropout2d", channel_kept), ("D.SpatialDropout", ours_kept)):
    constant = torch.equal(kept.all(-1).all(-1), kept.any(-1).any(-1))
    print(f"{name}: {100 * (~kept.any(-1).any(-1)).float().mean():.2f}% of maps dropped; "
          f"every map all-or-nothing: {constant}")

# %% tags=["hide-cell"]
# Check: spatial masks are all-or-nothing per map; both masks drop p; a neighbour is kept with q.
se_maps = math.sqrt(P_SPATIAL * (1 - P_SPATIAL) / n_maps)
for kept in (channel_kept, ours_kept):
    assert torch.equal(kept.all(-1).all(-1), kept.any(-1).any(-1))
    assert abs((~kept.any(-1).any(-1)).float().mean().item() - P_SPATIAL) < 5 * se_maps
pq = P_SPATIAL * (1 - P_SPATIAL)
assert abs((~element_kept).float().mean().item() - P_SPATIAL) < 5 * math.sqrt(pq / ones_maps.numel())
assert abs(neighbour_kept - (1 - P_SPATIAL)) < 5 * math.sqrt(pq / dropped_here.sum().item())

# %% [markdown]
# Now the information. For every dropped activation we predict its value
# from the average of its kept 4-neighbours in the same channel (a
# least-squares line per channel; `probes.neighbour_recovery`), and count what
# the prediction misses. The fraction of the feature map's variance that is
# dropped *and* cannot be read back from the same channel is what the next
# convolution really loses. Spatial dropout leaves no neighbours in the
# channel, so it loses exactly the fraction it drops, $p$: that is the
# analytic line in the figure.

# %%
P_SWEEP = (0.1, 0.2, 0.3, 0.5, 0.7)
g_rec = torch.Generator().manual_seed(D.mask_seed(7))
recovery = {kind: [probes.neighbour_recovery(fmap, p_, spatial=(kind == "spatial"), generator=g_rec)
                   for p_ in P_SWEEP]
            for kind in ("element", "spatial")}
metrics.styled(pd.DataFrame([{"dropout": kind,
                              **{f"lost at p = {p_}": f"{r['unrecoverable']:.3f}" for p_, r in zip(P_SWEEP, rows_)},
                              "dropped variance read back at p = 0.3": f"{rows_[2]['recovered']:.3f}"}
                             for kind, rows_ in recovery.items()]),
               "Variance of the feature map lost to dropout (fraction), after reading the neighbours back")

# %% mystnb={"image": {"alt": "Fraction of the feature map's variance lost to dropout, after reading dropped activations back from their neighbours, against the drop probability p: spatial dropout on the line y = p, element dropout well below it."}}
with plots.style():
    fig, ax = plots.figure("Element dropout removes less than its rate says", "drop probability p",
                           "variance lost (fraction of the map)")
    plots.measured_vs_analytic(ax, P_SWEEP, [r["unrecoverable"] for r in recovery["spatial"]], lambda pp: pp,
                               label="spatial dropout")
    plots.measured_vs_analytic(ax, P_SWEEP, [r["unrecoverable"] for r in recovery["element"]], None,
                               label="element dropout", marker="s")
plt.show()

# %% [markdown]
# Spatial dropout loses its rate $p$; element dropout loses less than three
# quarters of its rate for every $p \le 0.5$, because more than a quarter
# of the dropped variance can be read back from the neighbours.

# %% tags=["hide-cell"]
# Check: neighbours correlate (> 0.3); spatial loses p (±0.05); element loses < 3/4 of p.
assert neighbour_corr > 0.3, neighbour_corr
for p_, r in zip(P_SWEEP, recovery["spatial"]):
    assert abs(r["unrecoverable"] - p_) < 0.05, (p_, r)
for p_, r in zip(P_SWEEP, recovery["element"]):
    if p_ <= 0.5:
        assert r["unrecoverable"] < 0.75 * p_, (p_, r)
assert recovery["element"][P_SWEEP.index(0.3)]["recovered"] > 0.25

# %% [markdown]
# ## 8. Pitfalls, each with its symptom
#
# ### Forgetting `model.eval()`
#
# A network evaluated in training mode keeps dropping units: its
# predictions are those of one random sub-network, they change from call to
# call, and they are less accurate. We evaluate the $p = 0.5$ MLP of
# section 4 in evaluation mode once and in training mode ten times, as ten
# users who forgot `model.eval()` would.

# %%
forgot = runs[0.5, 0]["model"]
torch.manual_seed(D.mask_seed(8))
forgot.train()
with torch.no_grad():
    calls = [forgot(x_test) for _ in range(10)]
forgot.eval()
flipped = (calls[0].argmax(1) != calls[1].argmax(1)).float().mean().item()
eval_correct = correct(train.predict(forgot, test_set))
train_mode_correct = torch.stack([correct(out) for out in calls]).mean(0)  # per image, over the ten calls
forgot_cost = metrics.mean_se(eval_correct - train_mode_correct)
print(f"two calls in training mode disagree on {100 * flipped:.1f}% of the test images")
print(f"test accuracy: {100 * eval_correct.mean():.2f}% in eval mode, {100 * train_mode_correct.mean():.2f}% "
      f"in training mode ({100 * forgot_cost[0]:.2f} points, SE {100 * forgot_cost[1]:.2f})")

# %% [markdown]
# The functional form has its own version of the trap: `F.dropout(x, p)`
# does not know about any module's mode, and its `training` argument is
# `True` unless you pass `training=self.training`.

# %%
probe = torch.ones(N_ELEM)
functional_dropped = (F.dropout(probe, 0.5) == 0).float().mean().item()
print(f"F.dropout(x, 0.5) with no training argument drops {100 * functional_dropped:.2f}% of the units")
identity = torch.equal(F.dropout(probe, 0.5, training=False), probe)
print(f"F.dropout(x, 0.5, training=False) is the identity: {identity}")

# %% [markdown]
# Two training-mode calls disagree on some of the images, and the functional
# call drops half the units. That training mode costs accuracy is checked
# at class scale, as in section 5.

# %% tags=["hide-cell"]
# Check: calls disagree on > 2% of images; F.dropout drops half the units unless told.
assert flipped > 0.02, flipped
assert abs(functional_dropped - 0.5) < 5 * math.sqrt(0.25 / N_ELEM)
assert identity
if scale.current() != "smoke":  # too few standard errors at smoke scale, as in section 5
    assert forgot_cost[0] > 5 * forgot_cost[1], forgot_cost

# %% [markdown]
# ### Dropout at a batch size of a few samples
#
# Dropout itself does not care about the batch size: every sample gets its
# own mask (section 1), so a batch of one is dropped like any other. The
# trouble comes from what runs alongside it. The MC dropout of section 6,
# done the tempting way with `model.train()`, puts batch normalization in
# training mode too, and BN then normalizes with the statistics of the batch
# it is given. With a few samples those statistics are mostly noise, and
# with one sample BN refuses to run. We repeat MC dropout on the test images
# of the BN network in chunks of a few samples, both ways.

# %%
T_SMALL = scale.pick(smoke=10, class_=20, paper=50)
N_SMALL = scale.pick(smoke=300, class_=1_000, paper=2_000)  # test images, cut in chunks of a few
BATCHES = (2, 4, 16, 256)
x_small, y_small = x_test[:N_SMALL], y_test[:N_SMALL]
by_batch = {bs: {
    "trap": correct(D.mc_predict_train_mode(bn_model, x_small, T_SMALL, batch_size=bs, seed=5).mean(0), y_small),
    "right": correct(D.mc_predict(bn_model, x_small, T_SMALL, batch_size=bs, seed=5).mean(0), y_small)}
    for bs in BATCHES}
try:
    D.mc_predict_train_mode(bn_model, x_test[:4], T=1, batch_size=1)
    batch_of_one = None
except ValueError as exc:
    batch_of_one = exc
print(f"batch size 1 with model.train(): {type(batch_of_one).__name__}: {batch_of_one}")
metrics.styled(pd.DataFrame([{"batch size": bs, "model.train() (%)": f"{100 * r['trap'].mean():.2f}",
                              "enable_dropout (%)": f"{100 * r['right'].mean():.2f}"}
                             for bs, r in by_batch.items()]),
               f"MC dropout of the BN network in small batches: test accuracy ({N_SMALL} images, T = {T_SMALL})")

# %% [markdown]
# With two samples per batch, BN maps every feature to $\pm 1$ (each sample
# is one batch standard deviation from the batch mean), whatever the images
# are; the network's accuracy collapses. Turning on only the dropout layers
# makes the batch size irrelevant.

# %%
small_cost = metrics.mean_se(by_batch[2]["right"] - by_batch[2]["trap"])
print(f"accuracy lost at batch size 2: {100 * small_cost[0]:.2f} points (SE {100 * small_cost[1]:.2f})")

# %% tags=["hide-cell"]
# Check: batch size 2 costs model.train() > 5 SE; the right way is the same at 2 and 256.
assert small_cost[0] > 5 * small_cost[1], small_cost
right_spread = metrics.mean_se(by_batch[2]["right"] - by_batch[256]["right"])
assert abs(right_spread[0]) < 5 * right_spread[1] + 0.005, right_spread
assert isinstance(batch_of_one, ValueError)

# %% [markdown]
# ### Changing the rate mid-training
#
# Schedules that change the drop rate during training exist, and so do two
# ways to get them wrong. First, the rate lives in each dropout layer's `p`;
# changing the number you passed to the constructor, or an attribute of the
# model, does nothing and raises no error. Second, the training accuracy
# that a training loop logs is measured with dropout on, so it jumps when
# the rate changes even if the weights do not; curves logged across a
# change of rate are not comparable. We take the trained $p = 0.5$ MLP and
# measure the rate actually applied by its first dropout layer (among the
# units the ReLU left positive) and its training-mode accuracy on the
# training images.

# %%
net = runs[0.5, 0]["model"]
x_train_dev, y_train_dev = train.to_device(train_set, dev, stats)
with torch.no_grad():
    h_first = net.layers[:3](x_test)  # Flatten, Linear, ReLU: the input of the first dropout layer
positive = h_first > 0  # units the ReLU left on; dropout is what zeroes them
applied_rate = lambda: ((net.layers[3].train()(h_first) == 0) & positive).sum().item() / positive.sum().item()
train_mode_acc = lambda: torch.stack([correct(net.train()(x_train_dev), y_train_dev)
                                      for _ in range(10)]).mean(0)  # per image, over ten passes
torch.manual_seed(D.mask_seed(9))
with torch.no_grad():
    rate_before, acc_before, logits_before = applied_rate(), train_mode_acc(), net.eval()(x_test)
    net.p = 0.1  # looks like a rate change; it only adds an attribute to the model
    rate_attr = applied_rate()
    for layer in D.dropout_modules(net):
        layer.p = 0.1  # the real change
    rate_layers, acc_after, logits_after = applied_rate(), train_mode_acc(), net.eval()(x_test)
    for layer in D.dropout_modules(net):
        layer.p = 0.5  # restore the network of section 4
    del net.p
print(f"applied drop rate: {rate_before:.3f} before, {rate_attr:.3f} after `net.p = 0.1`, "
      f"{rate_layers:.3f} after setting p on each dropout layer")
jump = metrics.mean_se(acc_after - acc_before)  # per training image, averaged over ten training-mode passes
print(f"training-mode accuracy on the training images: {100 * acc_before.mean():.2f}% at p = 0.5, "
      f"{100 * acc_after.mean():.2f}% at p = 0.1 (jump {100 * jump[0]:.2f} points, SE {100 * jump[1]:.2f})")
print(f"eval-mode logits identical at both rates: {torch.equal(logits_before, logits_after)}")

# %% [markdown]
# The attribute on the model leaves the rate at 0.5 and the layers' `p`
# moves it to 0.1; the logged accuracy jumps with the same weights, while
# the eval-mode output is unchanged bit for bit.

# %% tags=["hide-cell"]
# Check: rates 0.5 and 0.1 (5 SE); the logged accuracy jumps (3 SE); eval output unchanged.
n_pos = positive.sum().item()
assert abs(rate_attr - 0.5) < 5 * math.sqrt(0.25 / n_pos), rate_attr
assert abs(rate_layers - 0.1) < 5 * math.sqrt(0.09 / n_pos), rate_layers
assert jump[0] > 3 * jump[1], jump
assert torch.equal(logits_before, logits_after)

# %% [markdown]
# ## What we measured
#
# - A dropout layer draws an independent coin for every sample, unit and
#   pass; the from-scratch version and `nn.Dropout` agree in every measured
#   statistic and are the identity in evaluation mode.
# - Inverted and classic scaling give the same expected activation; PyTorch
#   scales in training and does nothing at inference, and a test-time factor,
#   where one is used, is the keep probability $q$, not the rate. Forgetting
#   the scaling inflates activations by $1/q$ and makes the network
#   overconfident, and at high rates less accurate.
# - Dropout keeps the mean and inflates the variance as
#   Eq. {eq}`eq-dropout-variance` says (Kim et al.'s Eq. 6), so
#   $\Delta < 1$: the seed of chapter 2.
# - Dropout narrows the gap between training and test accuracy; its effect
#   on test accuracy at this size is small and noisy, and a high rate costs
#   accuracy.
# - Weight scaling is exactly the MC average for one linear layer after the
#   dropout and a close approximation otherwise; MC dropout's entropy rises
#   on unfamiliar inputs, provided only the dropout layers are switched on.
# - Element dropout on convolutional maps removes less than its rate because
#   neighbours carry the dropped information; spatial dropout removes what it
#   says.
#
# Chapter 2 puts dropout in front of batch normalization and follows the
# variance shift of section 3 through a network.
#
# ## Exercises
#
# ```{exercise}
# :label: ch1-ex-classic-delta
#
# Does the inconsistency ratio $\Delta$ depend on the scaling rule? Derive
# $\Delta$ for classic dropout (training $m\,x$, inference $q\,x$) and check
# your formula by simulation at $p = 0.3$, $\mathrm{E}[x] = 1$,
# $\mathrm{Var}[x] = 1$.
# ```
#
# ```{solution-start} ch1-ex-classic-delta
# :class: dropdown
# ```
#
# In training, $\mathrm{Var}[m\,x] = q\,\mathrm{E}[x^2] - q^2\,\mathrm{E}[x]^2
# = q\,\mathrm{Var}[x] + q(1-q)\,\mathrm{E}[x]^2$; at inference
# $\mathrm{Var}[q\,x] = q^2\,\mathrm{Var}[x]$. Their ratio is
# $q\,\mathrm{Var}[x] / (\mathrm{Var}[x] + (1-q)\,\mathrm{E}[x]^2)$, which is
# the inverted rule's $\Delta$ of section 3 with numerator and denominator
# multiplied by $q$: the same number. Scaling moves both variances by the
# same factor, so $\Delta$ cannot tell the rules apart.

# %%
p_ex = 0.3
repro.seed_everything(11)
x_ex = torch.randn(N_ELEM, dtype=torch.float64) + 1.0
g_ex = torch.Generator().manual_seed(D.mask_seed(11))
y_train_ex = D.dropout(x_ex, p_ex, scaling="classic", generator=g_ex)
y_test_ex = D.dropout(x_ex, p_ex, training=False, scaling="classic")
delta_classic = y_test_ex.var().item() / y_train_ex.var().item()
delta_inverted = variance.dropout_ratio(1.0, 1.0, p_ex)
kurtosis = ((y_train_ex - y_train_ex.mean()) ** 4).mean().item() / y_train_ex.var().item() ** 2
rel_se_ex = math.sqrt((kurtosis - 1) / N_ELEM)  # relative standard error of the training variance
print(f"classic Δ measured {delta_classic:.4f}; inverted Δ formula {delta_inverted:.4f}")
assert abs(delta_classic / delta_inverted - 1) < 5 * rel_se_ex + 5 * math.sqrt(2 / N_ELEM)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch1-ex-mc-passes
#
# Predict first: for the MLP of section 5 with one dropout before its output
# layer, how many MC passes $T$ are needed before the averaged logits are within 0.1 of
# the eval-mode logits (mean absolute difference)? Predict $T$ from the
# noise-only formula, then check it with fresh passes.
# ```
#
# ```{solution-start} ch1-ex-mc-passes
# :class: dropdown
# ```
#
# The expected error is $c/\sqrt{T}$ with $c = \sqrt{2/\pi}\,\bar\sigma$
# measured in section 5, so $T = \lceil (c/0.1)^2 \rceil$.

# %%
target = 0.1
c_exact = noise_only["before the output layer only"]
T_needed = math.ceil((c_exact / target) ** 2)
fresh = D.mc_outputs(ens["before the output layer only"], x_test[:N_ENS], T_needed, seed=12)
achieved = (fresh.mean(0) - ws_logits["before the output layer only"]).abs().mean().item()
print(f"predicted T = {T_needed}; mean |error| with that many fresh passes: {achieved:.4f}")
assert achieved < 1.15 * target, achieved

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch1-ex-shared-mask
#
# A hand-written dropout draws one mask per *batch* and shares it across
# the $B$ samples, instead of one per sample. Each unit still keeps its mean
# and, over many batches, the variance of Eq. {eq}`eq-dropout-variance`. But what is the variance of
# a unit's *batch mean* in each case? Derive both, and check them by
# simulation with $B = 64$, $p = 0.5$, $\mathrm{E}[x] = 1$, $\mathrm{Var}[x] = 1$.
# ```
#
# ```{solution-start} ch1-ex-shared-mask
# :class: dropdown
# ```
#
# With one coin per sample the $B$ outputs are independent, so the variance
# of their mean is Eq. {eq}`eq-dropout-variance` divided by $B$:
# $\mathrm{Var}[x]/(qB) + (1-q)\,\mathrm{E}[x]^2/(qB)$. With a shared coin
# the batch mean is $(m/q)\,\bar x$, and
# $\mathrm{E}[m^2/q^2]\,\mathrm{E}[\bar x^2] - \mathrm{E}[x]^2
# = \mathrm{Var}[x]/(qB) + (1-q)\,\mathrm{E}[x]^2/q$: the second term does
# not shrink with $B$. These are the same two formulas as dropout before and
# after global average pooling (Kim et al.'s {prf:ref}`prop-5`, chapter 4), with
# $B$ samples in place of $S$ positions; `droplab.variance` has them.

# %%
B_ex, p_sh, units = 64, 0.5, 100
n_batches = max(N_ELEM // (B_ex * units) * 10, 200)
repro.seed_everything(13)
x_sh = torch.randn(n_batches, B_ex, units, dtype=torch.float64) + 1.0
g_sh = torch.Generator().manual_seed(D.mask_seed(13))
per_sample = D.dropout(x_sh, p_sh, generator=g_sh).mean(1)
one_per_batch = D.mask((n_batches, 1, units), p_sh, generator=g_sh, dtype=torch.float64)
shared = D.dropout(x_sh, p_sh, mask=one_per_batch).mean(1)
formulas = {"per sample": variance.variance_at_h4(1.0, 1.0, p_sh, B_ex),
            "shared": variance.variance_at_h5(1.0, 1.0, p_sh, B_ex)}
for name, means in (("per sample", per_sample), ("shared", shared)):
    v = means.var().item()
    se_v = math.sqrt((((means - means.mean()) ** 4).mean().item() - v**2) / means.numel())
    print(f"{name:10}: Var[batch mean] = {v:.4f}, formula {formulas[name]:.4f}")
    assert abs(v - formulas[name]) < 5 * se_v, (name, v, formulas[name])

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch1-ex-predict-relu
#
# Predict first: the output of a ReLU fed with standard normal inputs has
# mean $1/\sqrt{2\pi} \approx 0.40$ and variance $(\pi - 1)/(2\pi) \approx 0.34$.
# Such a feature goes through dropout with $p = 0.4$. Write down the variance
# of the output in training and its $\Delta$ before running anything, then
# measure both on a large sample.
# ```
#
# ```{solution-start} ch1-ex-predict-relu
# :class: dropdown
# ```
#
# Eq. {eq}`eq-dropout-variance` with $q = 0.6$ gives
# $0.34/0.6 + (0.4/0.6)\cdot 0.16 \approx 0.67$, and
# Eq. {eq}`eq-dropout-ratio` gives $\Delta \approx 0.34/0.67 \approx 0.51$,
# well below $q$ because the ReLU output is not centred. With the exact
# moments, $\Delta$ simplifies to $(\pi - 1)/(\pi/q - 1)$, a value chapter 2
# meets again (Kim et al.'s Eq. 29).

# %%
p_relu = 0.4
repro.seed_everything(14)
x_relu = torch.relu(torch.randn(N_ELEM, dtype=torch.float64))
predicted_var = D.expected_output_variance(variance.relu_gaussian_var(), variance.relu_gaussian_mean(), p_relu)
predicted_delta = variance.dropout_ratio(variance.relu_gaussian_var(), variance.relu_gaussian_mean(), p_relu)
y_relu = D.dropout(x_relu, p_relu, generator=torch.Generator().manual_seed(D.mask_seed(14)))
delta_relu = variance.inconsistency_ratio(nn.Dropout(p_relu), x_relu, seed=14)
se_relu = math.sqrt((((y_relu - y_relu.mean()) ** 4).mean().item() - y_relu.var().item() ** 2) / N_ELEM)
print(f"training variance: predicted {predicted_var:.4f}, measured {y_relu.var().item():.4f} (SE {se_relu:.4f})")
print(f"Δ: predicted {predicted_delta:.4f}, measured {delta_relu:.4f}; (π − 1)/(π/q − 1) = "
      f"{variance.ratio_nonresidual(p_relu):.4f}")
assert abs(y_relu.var().item() - predicted_var) < 5 * se_relu
assert abs(delta_relu / predicted_delta - 1) < 5 * se_relu / predicted_var + 5 / math.sqrt(N_ELEM)
assert abs(predicted_delta - variance.ratio_nonresidual(p_relu)) < 1e-12

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch1-ex-which-scaling
#
# Design: you are handed three dropout layers with $p = 0.25$ and told that
# one scales the inverted way, one the classic way and one forgets to scale,
# but not which is which. You may switch each between training and
# evaluation mode and feed it any input you like. Design the smallest
# experiment that tells them apart from their outputs alone, then run it on
# the three layers below.
# ```
#
# ```{solution-start} ch1-ex-which-scaling
# :class: dropdown
# ```
#
# Feed a tensor of ones. In training, a kept unit comes out as $1/q$ under
# the inverted rule and as $1$ under the other two; in evaluation mode the
# output is $q$ under the classic rule and $1$ under the other two. The pair
# (kept value in training, value at inference) is $(1/q, 1)$, $(1, q)$ or
# $(1, 1)$: exact numbers, no statistics needed. The table of section 2 says
# the same thing in the language of means.

# %%
p_box = 0.25
repro.seed_everything(15)
hidden_rules = [("inverted", "classic", "none")[k] for k in torch.randperm(3).tolist()]
boxes = [D.Dropout(p_box, scaling=rule) for rule in hidden_rules]  # hidden_rules is used only to grade
signatures = {"inverted": (1 / (1 - p_box), 1.0), "classic": (1.0, 1 - p_box), "none": (1.0, 1.0)}
probe_ones = torch.ones(1_000, dtype=torch.float64)
readings = [(box.train()(probe_ones).max().item(), box.eval()(probe_ones).max().item()) for box in boxes]
identified = [next(rule for rule, sig in signatures.items() if all(map(math.isclose, reading, sig)))
              for reading in readings]
print("(kept value in training, value at inference) per layer:", [tuple(round(v, 4) for v in r) for r in readings])
print("identified:", identified)
assert identified == hidden_rules

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch1-ex-ridge
#
# Predict first: a linear regression $\hat y = w^\top x$ is trained by
# gradient descent with dropout ($p = 0.5$) on its three inputs and no weight
# decay. The inputs are independent, with standard deviations 0.3, 1 and 3.
# Will the learned weights equal least squares, or be shrunk, and by what
# factor each? Would weight decay shrink them the same way? Then train it
# and compare.
# ```
#
# ```{solution-start} ch1-ex-ridge
# :class: dropdown
# ```
#
# Averaged over the masks, the squared error of one sample is
# $\mathrm{E}_m[(y - w^\top (m \odot x)/q)^2] = (y - w^\top x)^2 +
# \tfrac{p}{q}\sum_j w_j^2 x_j^2$, by Eq. {eq}`eq-dropout-variance`
# applied to each term: dropout adds an L2 penalty on each weight, scaled by
# the energy $\sum_i x_{ij}^2$ of its feature {cite:p}`srivastava2014dropout`.
# For independent features the minimizer is least squares times
# $1/(1 + p/q) = q$: every weight is halved, whatever its feature's scale.
# Weight decay, $\lambda \lVert w \rVert^2$, penalizes every weight alike, so
# it shrinks the weight of a small-scale feature the most (below, with the
# $\lambda$ that shrinks the middle weight as much as dropout does). Dropout is not
# "weight decay under another name": it is weight decay measured in the
# units of the data.

# %%
p_lin = 0.5
q_lin = 1 - p_lin
repro.seed_everything(16)
X_lin = torch.randn(500, 3, dtype=torch.float64) * torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64)
y_lin = X_lin @ torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64) + 0.5 * torch.randn(500, dtype=torch.float64)
gram = X_lin.T @ X_lin
w_ls = torch.linalg.solve(gram, X_lin.T @ y_lin)
w_penalized = torch.linalg.solve(gram + p_lin / q_lin * torch.diag(torch.diag(gram)), X_lin.T @ y_lin)
w_decay = torch.linalg.solve(gram + p_lin / q_lin * gram[1, 1] * torch.eye(3, dtype=torch.float64), X_lin.T @ y_lin)
g_lin = torch.Generator().manual_seed(D.mask_seed(16))
w_lin, w_avg, steps_lin = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 4_000
for step in range(steps_lin):  # full-batch gradient descent, a fresh mask per sample and step
    x_drop = D.dropout(X_lin, p_lin, generator=g_lin)
    w_lin -= 0.02 * 2 * x_drop.T @ (x_drop @ w_lin - y_lin) / len(y_lin)
    if step >= steps_lin // 2:
        w_avg += w_lin / (steps_lin - steps_lin // 2)  # average of the second half's iterates
assert (w_avg - w_penalized).abs().max() < 0.02, (w_avg, w_penalized)
assert ((w_avg / w_ls - q_lin).abs() < 0.05).all(), w_avg / w_ls
assert w_decay[0] / w_ls[0] < 0.2 and w_decay[2] / w_ls[2] > 0.8, w_decay / w_ls
metrics.styled(pd.DataFrame({"feature scale": [0.3, 1.0, 3.0], "least squares": w_ls.numpy(),
                             "trained with dropout": w_avg.numpy(), "dropout / least squares": (w_avg / w_ls).numpy(),
                             "weight decay / least squares": (w_decay / w_ls).numpy()}).round(3),
               f"Linear regression with input dropout (p = {p_lin}) against least squares and weight decay")

# %% [markdown]
# ```{solution-end}
# ```
