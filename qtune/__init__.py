"""qtune: Lightning training with pluggable data-pruning strategies.

``PruningCallback`` (the Lightning integration) is imported on first use, so that the pruning core
(``qtune.pruning.core``) and the Hugging Face integration (``qtune.hf``) load without Lightning."""

__version__ = "0.1.0"

from qtune.pruning.indexed import IndexedDataset  # noqa: E402
from qtune.strategies import build_strategy, register_strategy, registered_names  # noqa: E402

__all__ = [
    "IndexedDataset",
    "PruningCallback",
    "PruningCore",
    "build_strategy",
    "register_strategy",
    "registered_names",
]


def __getattr__(name: str):
    if name == "PruningCallback":
        from qtune.lightning.callback import PruningCallback

        return PruningCallback
    if name == "PruningCore":
        from qtune.pruning.core import PruningCore

        return PruningCore
    raise AttributeError(f"module 'qtune' has no attribute {name!r}")
