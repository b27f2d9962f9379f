"""rbwa: Recurrent Batch Weight Averaging and its relatives.

The names below load on first use (PEP 562), so that `rbwa`'s entry point can settle how torch's threads wait
before torch loads (see `rbwa.__main__`); `from rbwa import RBWA` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rbwa.averaging import RBWA, fold_, fold_reference_, fold_weight, lookahead, rbwa, rbwa_e, rswa, sema

__version__ = "0.3.0"
__all__ = ["RBWA", "fold_", "fold_reference_", "fold_weight", "lookahead", "rbwa", "rbwa_e", "rswa", "sema",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("rbwa.averaging"), name)
    raise AttributeError(f"module 'rbwa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
