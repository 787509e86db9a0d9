"""droplab: the shared library of the book *Dropout, Where?*.

One module per idea, each idea in one module (the design table; the chapters
say which one they lean on):

==============================  =======================================================================
module                          its one idea
==============================  =======================================================================
``droplab.scale``               the three run scales (smoke / class / paper) and their sizes
``droplab.repro``               device choice, seeding, provenance records
``droplab.data``                data sets as uint8 tensors: offline-first lookup, sha256 checks,
                                subsets and class splits, device-resident augmentation
``droplab.dropout``             dropout from scratch and the primitives everything else builds on:
                                ``check_p``, ``is_dropout``, ``seeded_masks``, ``saved_buffers``,
                                one MC loop ``mc_samples`` (chapter 1)
``droplab.variance``            the inconsistency ratio (Kim et al. Eq. 3) and the analytic formulas
                                of Eqs. 6-35 (chapters 2-4)
``droplab.models``              the networks, every dropout position by name: PreResNet, ResNetV1,
                                the head (P0-P7, H1-H7), MLP, CNN, the fully connected test blocks
``droplab.transformer``         the pre-LN vision transformer and its dropout positions T0-T4 (chapter 6)
``droplab.inconsistency``       the paper's module tests: Delta measured on small blocks beside the
                                formulas of Propositions 2-5 (chapters 2-4)
``droplab.surgery``             editing a built network: swap, rescale, insert or move dropout, copy weights,
                                replace the classifier (chapters 1, 2, 4-6)
``droplab.train``               ``fit`` / ``evaluate`` / ``predict`` / ``recalibrate_bn`` with a ``Recipe``
``droplab.probes``              measurements inside a network that train nothing: neighbour recovery,
                                the variance shift at every norm, per-sample losses, gradient noise (chapters 1-6)
``droplab.metrics``             statistics for claims: t-quantiles, mean +- CI, paired differences,
                                power, verdicts, AUROC
``droplab.experiments``         the experiment registry: what each run of a sweep is
``droplab.records``             run records: write, read, check, tabulate
``droplab.sweep``               the resumable, shardable runner that trains a sweep's runs
``droplab.bench``               training throughput of the fast path against a plain PyTorch loop
``droplab.plots``               the book's figure style
==============================  =======================================================================

Layers, bottom up (a module imports only those above it): scale, repro,
data, dropout, variance, models, transformer, inconsistency / surgery, train, probes,
metrics, experiments, records, sweep, bench; plots stands apart.

Importing ``droplab`` imports nothing heavy and has no side effects; import the
module you need (``from droplab import models``).
"""

__version__ = "0.1.0"
