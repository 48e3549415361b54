"""Entry points besides ``qtune-train`` (``python -m qtune.train``): ``qtune-score``,
``qtune-eval``, ``qtune-report``, and the Hydra callbacks of a run."""
