"""Where rbwa 0.3 documented the merge API (``rbwa.merge.candidates``, ``rbwa.merge.reestimate_bn``): both now live in
:mod:`rbwa.checkpoints.merge`, and this alias, kept for code written against 0.3, warns once and will go."""

import warnings

from rbwa.checkpoints.merge import candidates, reestimate_bn

__all__ = ["candidates", "reestimate_bn"]
warnings.warn("rbwa.merge moved to rbwa.checkpoints.merge in rbwa 0.4: import candidates and reestimate_bn from there",
              DeprecationWarning, stacklevel=2)
