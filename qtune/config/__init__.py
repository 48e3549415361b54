"""The declared config (``declared``: the typed checker data and models use), the declared shape
of every group with the one validation pass (``schema``), and building a task and model from a
composed config (``build``)."""
