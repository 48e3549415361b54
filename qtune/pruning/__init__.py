"""The trainer-independent pruning core: plans, the per-sample statistics store, the step record,
scoring passes, the compute budget, LR progress, epoch timing and resumable state. No Lightning
and no transformers here; the integrations in :mod:`qtune.lightning` and :mod:`qtune.hf` drive it."""
