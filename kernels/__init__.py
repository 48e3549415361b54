"""Per-token statistics (loss, entropy, EL2N, label probability, top-1 correctness, margin).

`token_stats` works on logits, `linear_token_stats` on hidden states + LM-head weight without
materialising the logits; both take `backend` in {"auto", "triton", "compiled", "torch"}
(and "reference", the naive formula). `set_default_backend` is the `kernels.backend` hook.
"""

from .dispatch import (BACKENDS, get_default_backend, resolve_backend,  # noqa: F401
                       set_default_backend, token_stats)
from .linear import linear_token_stats  # noqa: F401
from .reference import TokenStats, token_stats_reference  # noqa: F401
from .warmup import warm_up  # noqa: F401
