"""The Hugging Face integration: :class:`PruningMixin` puts qtune's pruning core inside any
``transformers.Trainer`` subclass (TRL's ``SFTTrainer`` included); see :mod:`qtune.hf.mixin`."""

from qtune.hf.mixin import STATE_FILE, PruningMixin

__all__ = ["STATE_FILE", "PruningMixin"]
