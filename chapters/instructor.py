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
# # For instructors: teaching with this book
#
# This page is for whoever teaches a course from the book: what each chapter
# teaches, what students should know before they start, how long each
# chapter takes to read and to run, a plan for two weeks, and how to hand
# out the exercises without their solutions. Its numbers are computed when
# the page is built, from the chapters themselves and from the timings
# measured in the repository's README.

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
import re

import nbformat
import pandas as pd

from droplab import metrics, repro

# %% [markdown]
# ## Learning objectives
#
# After each chapter a student should be able to do the following.
#
# - **Chapter 0, {doc}`00_introduction`.** State the book's notation ($p$
#   drops, $q = 1 - p$ keeps); name the dropout positions P0–P7 of a
#   pre-activation residual block and H1–H7 of a classification head; read a
#   verdict: paired seeds, the interval of a mean paired difference,
#   resolved against unresolved, and why a family of comparisons is
#   corrected together.
# - **Chapter 1, {doc}`01_dropout_mechanics`.** Write dropout from scratch
#   and check it against `nn.Dropout`; explain inverted against classic
#   scaling and what a forgotten scaling costs; show that dropout keeps a
#   feature's mean but not its variance; compare weight scaling with
#   averaging over sampled sub-networks and use MC dropout for uncertainty;
#   explain why convolutional maps need spatial (channel-wise) masks; name the
#   common pitfalls by their symptoms.
# - **Chapter 2, {doc}`02_bn_variance_shift`.** Write batch normalization
#   out; define and measure the inconsistency ratio $\Delta$; explain why
#   dropout before a BN layer shifts the variance the BN layer was
#   calibrated on, and measure the fixes (dropout after the last BN,
#   recalibrating BN statistics, uniform noise, wider layers).
# - **Chapter 3, {doc}`03_residual_placement`.** Derive where a dropout
#   layer in a residual branch disturbs the next BN least (Propositions 1–4)
#   and where Guideline 1 puts it (P6); explain why a regime must first pass
#   a positive control; read the placement study's primary contrasts with
#   Holm's correction, and say what its unresolved verdicts do and do not
#   rule out.
# - **Chapter 4, {doc}`04_head_placement`.** Explain why H1 and H2 feed a
#   BN, why H6 and H7 give large losses on correct predictions, and why
#   dropout before global average pooling is steadier than after it
#   (Proposition 5, Guideline 2); read the H4 against H5 comparison.
# - **Chapter 5, {doc}`05_claims_tested`.** Turn a rule of thumb into a
#   claim that an experiment can refute, design the smallest such
#   experiment, and give it one of three verdicts.
# - **Chapter 6, {doc}`06_beyond_batch_norm`.** Say whether the variance
#   shift survives GroupNorm and LayerNorm; place dropout in a pre-LN
#   transformer block; explain DropPath and early dropout, and what the
#   book's runs say about them.
#
# ## Prerequisites
#
# Students should have trained a small convolutional network in PyTorch and
# know, or read before the course:
#
# - **Pre-activation residual networks**, whose blocks put BN and ReLU before
#   each convolution: {cite:t}`he2016identity` (the original ResNet is
#   {cite:t}`he2016deep`). Chapters 3 and 6 are built on them.
# - **Global average pooling**, which replaces a network's fully connected
#   layers by the mean of each feature map {cite:p}`lin2014network`;
#   chapter 4 places dropout on either side of it.
# - **Batch normalization** {cite:p}`ioffe2015batch`, in training and in
#   evaluation mode (chapter 2 writes it out again).
# - **The law of total variance**,
#   $\mathrm{Var}[Y] = \mathbb{E}[\mathrm{Var}[Y \mid X]] + \mathrm{Var}[\mathbb{E}[Y \mid X]]$,
#   which chapters 1–4 use to compute the variance of a dropped-out feature
#   {cite:p}`wasserman2004all`.
# - **Paired $t$-tests and statistical power**: a confidence interval of a
#   mean difference, and how many runs are needed to see an effect of a
#   given size {cite:p}`wasserman2004all,cohen1988statistical`; chapter 0
#   shows how the book uses them ({ref}`reading-verdicts`).
# - **Vision transformers** {cite:p}`dosovitskiy2021image`, for the second
#   half of chapter 6.
#
# ## How long each chapter takes
#
# Reading time is estimated from the words of each chapter's text cells (its
# prose, not its code), at an assumed reading speed of 200 words a minute,
# slow enough for technical text. Running time is the time the whole
# notebook takes to execute, as measured by `scripts/time_chapters.py` and
# written into the repository's README, at the `smoke` scale (the tests)
# and the `class` scale (the default, a laptop).

# %%
BOOK = next(d for d in pathlib.Path("_").resolve().parents if (d / "_toc.yml").is_file())
WORDS_PER_MINUTE = 200
EXERCISE = re.compile(r"```\{exercise\}[^\n]*\n(?::[^\n]*\n)*\s*(\S[^\n]*)")   # an exercise and its prompt's first line
timings = repro.chapter_timings(BOOK / "README.md")
chapters = sorted(p.stem for p in (BOOK / "chapters").glob("[0-9][0-9]_*.ipynb"))
text = {c: "\n".join(cell.source for cell in nbformat.read(BOOK / "chapters" / f"{c}.ipynb", as_version=4).cells
                     if cell.cell_type == "markdown") for c in chapters}
words = {c: sum(any(ch.isalpha() for ch in token) for token in text[c].split()) for c in chapters}
prompts = {c: EXERCISE.findall(text[c]) for c in chapters}
minutes = pd.DataFrame([{
    "chapter": c, "words": words[c], "reading (min)": round(words[c] / WORDS_PER_MINUTE),
    "running, smoke (min)": round(timings.seconds[c]["smoke"] / 60, 1),
    "running, class (min)": round(timings.seconds[c]["class"] / 60, 1),
    "exercises": len(prompts[c]),
    "of which predict or design": sum(p.startswith(("Predict first:", "Design:")) for p in prompts[c]),
} for c in chapters])
print(f"Measured on: {timings.measured_on}")
metrics.styled(minutes, f"Reading ({WORDS_PER_MINUTE} words a minute) and running time of each chapter")

# %% [markdown]
# The running times were measured on the machine the line above names, with
# one torch thread; a laptop of similar age takes about as long, a GPU much
# less. Exercises add their own time: each solution runs in seconds, but
# thinking takes what it takes.

# %% tags=["hide-cell"]
# Check: every numbered chapter has a measured time at both scales, text to read, and a count of exercises.
assert set(timings.seconds) == set(chapters), (sorted(timings.seconds), chapters)
assert all(timings.seconds[c][s] is not None for c in chapters for s in ("smoke", "class"))
assert all(words[c] > 300 for c in chapters) and timings.measured_on, words

# %% [markdown]
# ## A two-week plan
#
# Four sessions, two a week, each starting with reading and running the
# chapters at `class` scale and ending with their exercises. The table sums
# each session's reading and class-scale running time; add the exercises.

# %%
SESSIONS = {
    "week 1, session 1: notation, verdicts, dropout itself": ["00_introduction", "01_dropout_mechanics"],
    "week 1, session 2: batch normalization and the variance shift": ["02_bn_variance_shift"],
    "week 2, session 3: placement in residual blocks and heads": ["03_residual_placement", "04_head_placement"],
    "week 2, session 4: folk claims, other norms and transformers": ["05_claims_tested", "06_beyond_batch_norm"],
}
by_chapter = minutes.set_index("chapter")
plan = pd.DataFrame([{
    "session": name, "chapters": ", ".join(c[:2] for c in cs),
    "reading (min)": int(by_chapter.loc[cs, "reading (min)"].sum()),
    "running, class (min)": round(float(by_chapter.loc[cs, "running, class (min)"].sum()), 1),
    "exercises": int(by_chapter.loc[cs, "exercises"].sum()),
} for name, cs in SESSIONS.items()])
metrics.styled(plan, "Two weeks, four sessions: reading and class-scale running time per session")

# %% tags=["hide-cell"]
# Check: the four sessions cover every chapter once, in the book's order.
assert [c for cs in SESSIONS.values() for c in cs] == chapters, SESSIONS

# %% [markdown]
# Session 1 is mostly reading and gives chapter 0's {ref}`reading-verdicts`
# the time it needs: every later verdict is read that way. Sessions 3 and 4
# read committed run records, so their class-scale runs stay short; a class
# that wants to make records itself can run one sweep overnight (see below).
# The {doc}`guide` closes the course as a one-page summary.
#
# ## What runs where
#
# - **On a laptop, without a GPU**: every chapter at the `class` scale, the
#   default, in the times above. The accuracy results of chapters 3, 4 and 6
#   are read from committed class-scale run records, so no chapter waits for
#   a long training run; each re-runs one or two trainings live.
# - **On a GPU**: the `paper` scale (`DROPLAB_SCALE=paper`), the sweeps
#   behind the published tables. `bash scripts/gpu_check.sh` runs the GPU
#   tests, a benchmark and the paper-scale sweeps on one CUDA machine within
#   a fixed time budget; {doc}`appendix_reproducing` says how to prepare the
#   data for a machine without network and how to commit the records it
#   leaves.
# - **In CI and in the tests**: the `smoke` scale, chosen automatically
#   under pytest.
#
# ## Handing out the exercises
#
# Each chapter ends with exercises whose solutions are folded away in this
# book and executed when it is built, so every solution is known to run.
# For a class, write the student edition, every chapter with its exercises
# and without their solutions:
#
# ```bash
# python scripts/student_edition.py OUT_DIR
# ```
#
# and hand out the notebooks in `OUT_DIR`. The book and the repository's
# notebooks, where each solution follows its exercise, are the answer key.
# Exercises whose prompt starts with "Predict first:" ask students to commit
# to an answer before they run anything; those starting with "Design:" ask
# for an experiment, and suit discussion in class.
