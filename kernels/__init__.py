"""Per-token statistics (loss, entropy, EL2N, label probability, top-1 correctness, margin).

`token_stats` works on logits, `linear_token_stats` on hidden states + LM-head weight without
materialising the logits; both take `backend` in {"auto", "triton", "compiled", "torch"}
(and "reference", the naive formula). `set_default_backend` is the `kernels.backend` hook.

Layers, each importing only from the ones above it (checked by tests/unit/test_import_layers.py):

    formula, reference                   pure math and the TokenStats tuple (torch only)
    extra_formula, extra_reference       the same for the optional top-K entropy and KL
    torch_chunked, compiled, triton_stats  the backends: the formula as code for a device
    dispatch                             backend choice, "auto", the fallback chain
    autograd                             StatsFunction: a backend's stats forward, grad backward
    logits, linear                       the entry points (token_stats, linear_token_stats)
    extra, linear_extra                  token_extra_stats / linear_extra_stats: top-K entropy, KL
    warmup                               builds a backend before training (calls the entries)
"""

if __name__ != "qtune.kernels":  # found as the bare `kernels` from the repository root
    from qtune.bare_names import hand_over

    hand_over(__name__, __file__)
else:
    from .dispatch import BACKENDS, get_default_backend, resolve_backend, set_default_backend
    from .extra import token_extra_stats
    from .extra_reference import ExtraStats, extra_stats_reference
    from .linear import linear_token_stats
    from .linear_extra import linear_extra_stats
    from .logits import token_stats
    from .reference import TokenStats, token_stats_reference
    from .warmup import warm_up

    __all__ = [
        "BACKENDS",
        "ExtraStats",
        "TokenStats",
        "extra_stats_reference",
        "get_default_backend",
        "linear_extra_stats",
        "linear_token_stats",
        "resolve_backend",
        "set_default_backend",
        "token_extra_stats",
        "token_stats",
        "token_stats_reference",
        "warm_up",
    ]
