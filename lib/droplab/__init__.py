"""droplab: the shared library of the book *Dropout, Where?*.

One module per idea (see the book's introduction):

- ``droplab.scale``    the three run scales (smoke / class / paper) and their sizes
- ``droplab.repro``    device choice, seeding, provenance records
- ``droplab.data``     data sets as uint8 tensors, offline-first lookup, sha256 checks,
                       device-resident augmentation
- ``droplab.dropout``  dropout written from scratch (chapter 1)
- ``droplab.variance`` the inconsistency ratio and the analytic formulas (chapters 2-4)
- ``droplab.models``   PreResNet, ResNetV1, MLP, CNN with every dropout position by name
- ``droplab.train``    ``fit`` / ``evaluate`` / ``recalibrate_bn``
- ``droplab.sweep``    the resumable, shardable experiment runner and its records
- ``droplab.plots``    the book's figure style

Importing ``droplab`` imports nothing heavy and has no side effects; import the
module you need (``from droplab import models``).
"""

__version__ = "0.1.0"
