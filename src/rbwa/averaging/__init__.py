"""The averaging core, importable without the trainer, the CLI or the analysis.

- :mod:`~rbwa.averaging.fold`: the family's fold rule and its kernels (pure, over tensor lists);
- :mod:`~rbwa.averaging.dtensor`: FSDP2's DTensors as each process holds them, whole, and cut back into shards;
- :mod:`~rbwa.averaging.optim`: the :class:`RBWA` optimizer wrapper and its recipes;
- :mod:`~rbwa.averaging.named`: averages kept by parameter name (the callbacks' and the trainer's side averages);
- :mod:`~rbwa.averaging.weights`: post-hoc weights over a series of checkpoints, and the one streaming combine.
"""

from rbwa.averaging.fold import fold_, fold_reference_, fold_weight
from rbwa.averaging.optim import RBWA, lookahead, rbwa, rbwa_e, rswa, sema

__all__ = ["RBWA", "fold_", "fold_reference_", "fold_weight", "lookahead", "rbwa", "rbwa_e", "rswa", "sema"]
