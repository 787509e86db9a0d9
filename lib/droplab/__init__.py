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
``droplab.blocks``              block layouts, written once: each block's slot list in execution order
                                (P0-P7, H1-H7, T0-T4; Kim et al. Figures 2 and 4), ``ResidualBlock``,
                                ``with_dropout``, and what derives from a layout (a position's
                                neighbours, the next norm, the guideline); networks and diagrams read it
``droplab.models``              the convolutional networks, built from those layouts: PreResNet,
                                ResNetV1, the head, MLP, CNN (chapters 1-5)
``droplab.transformer``         the pre-LN vision transformer and its positions T0-T4 (chapter 6)
``droplab.networks``            ``NetConfig`` and ``build``: one network from one config, any architecture
``droplab.inconsistency``       the paper's module tests: Delta measured on small fully connected blocks
                                beside the formulas of Propositions 2-5 (chapters 2-4)
``droplab.surgery``             editing a built network: swap, rescale, insert or move dropout, copy weights,
                                replace the classifier (chapters 1, 2, 4-6)
``droplab.train``               ``fit`` / ``evaluate`` / ``predict`` / ``recalibrate_bn`` with a ``Recipe``
``droplab.probes``              measurements inside a network that train nothing: neighbour recovery,
                                the variance shift at every norm, per-sample losses, gradient noise (chapters 1-6)
``droplab.metrics``             summaries for tables and figures: a mean with its interval or standard
                                error, AUROC, epochs to a target, the book's table style
``droplab.experiments``         the experiment registry: each run's ``RunSpec`` (network, recipe, data),
                                the configs as overrides of a base, seeds, declared primary contrasts
``droplab.compare``             comparisons as data: paired differences, intervals, Holm, verdicts, the
                                detectable effect a priori, tables
``droplab.records``             run records: write, and read only through one check that refuses a
                                missing, corrupt, stale or foreign record by name; inventory, provenance
``droplab.sweep``               the resumable, shardable runner that trains a sweep's runs
``droplab.bench``               training throughput of the fast path against a plain PyTorch loop
``droplab.plots``               the book's figure style, and the position diagrams drawn from ``blocks``
==============================  =======================================================================

Layers, bottom up (a module imports only modules before it in this list, inside functions
too, so there is no import circle): scale, repro, data, dropout, variance, blocks, then
models and transformer side by side (neither imports the other), networks, inconsistency,
surgery, train, probes, metrics, experiments, compare, records, sweep, bench; plots reads
blocks only. A module holds one idea, however long that takes.

Importing ``droplab`` imports nothing heavy and has no side effects; import the
module you need (``from droplab import models``).
"""

__version__ = "0.1.0"
