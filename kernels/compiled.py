"""Backend "compiled": `torch.compile` of the plain row formula.

Inductor fuses `stats_formula` (gather, two masked maxima, exp, three sums) into one C++
kernel on CPU (two sweeps per row, the second from cache) and into Triton on GPU, and
`grad_formula` into one loop that reads the logits once and writes the gradient once.

Both are compiled with `dynamic=True`: the row count N and the vocabulary V are symbolic, so a
new sequence length or batch size never recompiles. A new dtype or device does (one compile
per "shape family" = dtype x device), and Dynamo still specialises N in {0, 1}: `token_stats`
routes N == 0 elsewhere, N == 1 costs one extra compile.
"""

from __future__ import annotations

import torch

from .formula import grad_formula, grad_formula_into, stats_formula


def compiler_works() -> bool:
    """True when Inductor can build C++ for CPU (a compiler is on PATH and answers)."""
    try:
        import shutil
        import subprocess

        from torch._inductor import config

        cxx = config.cpp.cxx
        names = [c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if c]
        names = names or ["g++", "clang++", "c++"]
        exe = next((shutil.which(c) for c in names if shutil.which(c)), None)
        if exe is None:
            return False
        return subprocess.run([exe, "--version"], capture_output=True, timeout=20).returncode == 0
    except Exception:
        return False


class Compiled:
    name = "compiled"

    def __init__(self):
        self._stats = torch.compile(stats_formula, dynamic=True, fullgraph=True)
        self._grad = torch.compile(grad_formula, dynamic=True, fullgraph=True)
        self._grad_into = torch.compile(grad_formula_into, dynamic=True, fullgraph=True)

    # The small per-row tensors are cloned (N elements, negligible) so that they never arrive
    # as views of other tensors: Dynamo guards on view/base relations and would recompile.
    def stats(self, z, y, valid):
        return self._stats(z, y.clone(), valid.clone())

    def grad(self, z, y, valid, lse, g, out=None):
        """With `out` (which may be `z`), Inductor stores the fused result straight into it."""
        if out is None:
            return self._grad(z, y.clone(), valid.clone(), lse.clone(), g.clone())
        return self._grad_into(z, y.clone(), valid.clone(), lse.clone(), g.clone(), out)
