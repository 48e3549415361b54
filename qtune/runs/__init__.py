"""A run's files: atomic writes, the FLOPs model, ``summary.json``, checkpoint files."""
