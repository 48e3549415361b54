"""Local lm-evaluation-harness tasks that ship with qtune (no download).

``qtune_embedded/``: the embedded task's eval split, generated on the fly by
:func:`qtune.data.embedded.generate`, so it always matches the code. ``qtune_embedded`` gives the
plain prompt (question and ``A:`` marker); ``qtune_embedded_chat`` gives the question alone, to
be rendered by the model's chat template (``eval.lm_eval.apply_chat_template=true``). Both score
with qtune's own normalised exact match and token F1 (:mod:`qtune.eval.metrics`).
"""
