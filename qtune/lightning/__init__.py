"""The Lightning integration behind ``qtune-train``: the pruning callback, module, data module, the
budget callback, checkpointing, metrics log and console. Hooks only: the work is in
:mod:`qtune.pruning`."""
