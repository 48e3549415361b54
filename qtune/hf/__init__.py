"""The Hugging Face integration: :class:`PruningMixin` puts qtune's pruning core inside any
``transformers.Trainer`` subclass (TRL's ``SFTTrainer`` included); see :mod:`qtune.hf.mixin`.
:func:`write_token_losses` writes a reference's per-token losses for ``pruning_reference``
(:mod:`qtune.hf.reference`). Importing it registers ``attn_implementation="sdpa_segments"``
(:mod:`qtune.models.segment_attention`): packed rows attended per sample.
"""

from qtune.hf.mixin import STATE_FILE, PruningMixin
from qtune.hf.reference import write_token_losses
from qtune.models.segment_attention import register as _register_sdpa_segments

_register_sdpa_segments()

__all__ = ["STATE_FILE", "PruningMixin", "write_token_losses"]
