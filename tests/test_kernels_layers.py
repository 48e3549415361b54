"""The kernels package imports one way: pure math, backends, backend choice, autograd function,
entry points, warm-up (see the layering in kernels/__init__.py); no module imports another
that (directly or not) imports it back, not even lazily inside a function. Checked on the
source with ``ast``: a fresh-interpreter import test could not see a lazy circle, and every
import of a submodule runs the package's __init__ first anyway."""

import ast
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
MODULES = sorted(p.stem for p in KERNELS.glob("*.py") if p.stem != "__init__")


def local_imports(path: Path) -> set[str]:
    """Sibling modules a kernels module imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1:  # from .x import ... / from . import x
                found |= {mod.split(".")[0]} if mod else {a.name for a in node.names}
            elif mod.startswith("qtune.kernels."):
                found.add(mod.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("qtune.kernels.")}
    return found & set(MODULES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, stack + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_import_graph_of_kernels_is_acyclic():
    graph = {m: local_imports(KERNELS / f"{m}.py") for m in MODULES}
    assert graph["dispatch"] and graph["logits"], "the parser found no imports: is it broken?"
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle in kernels/: {' -> '.join(cycle)}"
    assert graph["formula"] == graph["reference"] == set()  # pure math imports no sibling


def test_cycle_finder_finds_the_old_circle():
    """The circle this test guards against: formula -> dispatch -> formula, and warmup."""
    old = {"formula": {"dispatch"}, "dispatch": {"formula", "triton_stats"},
           "triton_stats": {"warmup"}, "warmup": {"dispatch"}}
    assert find_cycle(old) is not None
