"""qtune: Lightning training with pluggable data-pruning strategies."""

__version__ = "0.1.0"
