"""qtune: Lightning training with pluggable data-pruning strategies."""

__version__ = "0.1.0"

from qtune.engine.callback import PruningCallback  # noqa: E402
from qtune.engine.indexed import IndexedDataset  # noqa: E402
from qtune.strategies import build_strategy, register_strategy, registered_names  # noqa: E402

__all__ = ["IndexedDataset", "PruningCallback", "build_strategy", "register_strategy",
           "registered_names"]
