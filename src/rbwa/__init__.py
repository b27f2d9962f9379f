"""rbwa: Recurrent Batch Weight Averaging and its relatives.

The names below, and the subpackages, load on first use (PEP 562), so that `rbwa`'s entry point can settle how
torch's threads wait before torch loads (see `rbwa.__main__`); `from rbwa import RBWA` and `rbwa.averaging.named`
work as usual.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from rbwa.averaging import RBWA, fold_, fold_reference_, fold_weight, lookahead, rbwa, rbwa_e, rswa, sema

__version__ = "0.4.0"
__all__ = ["RBWA", "fold_", "fold_reference_", "fold_weight", "lookahead", "rbwa", "rbwa_e", "rswa", "sema",
           "__version__"]


def __getattr__(name: str) -> _typing.Any:
    if name in __all__:
        return getattr(_importlib.import_module("rbwa.averaging"), name)
    if not name.startswith("_"):
        try:
            return _importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(n for n in set(globals()) | set(__all__) if not n.startswith("_") or n.startswith("__"))
