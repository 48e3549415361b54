"""Keep the repository's top-level `kernels/` and `strategies/` from posing as PyPI packages.

Both folders are installed as `qtune.kernels` and `qtune.strategies` (setuptools `package-dir`).
Whenever the repository root is on `sys.path` (`python -m ...`, `python -c`, a notebook or
torchrun started there), the bare name `kernels` would find the folder first, while transformers
needs Hugging Face's `kernels` package under that name. So a folder imported under its bare name
hands the name over to the installed package of that name, found on `sys.path` without the
repository root, or fails the way a missing module does. The handover replaces the module in
`sys.modules` before the import statement returns, which the import system honours.
"""

import importlib.machinery
import importlib.util
import os
import sys


def hand_over(name: str, init_file: str) -> None:
    """Import the installed package `name` in place of the folder whose `__init__.py` is `init_file`."""
    root = os.path.realpath(os.path.dirname(os.path.dirname(init_file)))
    path = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None:
        raise ModuleNotFoundError(
            f"No module named {name!r}: the folder {os.path.dirname(init_file)} is qtune.{name} "
            f"(import it under that name), and no other package {name!r} is installed",
            name=name,
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
