"""rbwa: Recurrent Batch Weight Averaging and its relatives."""

from rbwa.averaging import RBWA, fold_, fold_reference_, fold_weight, lookahead, rbwa, rbwa_e, rswa, sema

__version__ = "0.3.0"
__all__ = ["RBWA", "fold_", "fold_reference_", "fold_weight", "lookahead", "rbwa", "rbwa_e", "rswa", "sema",
           "__version__"]
