"""The Hugging Face integration: :class:`PruningMixin` puts qtune's pruning core inside any
``transformers.Trainer`` subclass (TRL's ``SFTTrainer`` included); see :mod:`qtune.hf.mixin`.
:func:`write_token_losses` writes a reference's per-token losses for ``pruning_reference``
(:mod:`qtune.hf.reference`)."""

from qtune.hf.mixin import STATE_FILE, PruningMixin
from qtune.hf.reference import write_token_losses

__all__ = ["STATE_FILE", "PruningMixin", "write_token_losses"]
