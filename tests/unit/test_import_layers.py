"""What each part may import (docs/architecture.md), checked on the source with ``ast``.

The kernels package imports one way: pure math, backends, backend choice, autograd function,
entry points, warm-up (see kernels/__init__.py); no module imports another that, directly or
not, imports it back, not even lazily inside a function. A fresh-interpreter import test could
not see a lazy circle, and every import of a submodule runs the package's __init__ first.
"""

import ast
from pathlib import Path

import pytest
from conftest import REPO

ROOT = REPO
# folder -> installed package (pyproject's package-dir)
FOLDERS = {"kernels": "qtune.kernels", "strategies": "qtune.strategies", "qtune": "qtune"}
# part -> the qtune packages it may import (besides itself); None: anything
ALLOWED = {
    "qtune.kernels": {"qtune.bare_names"},  # stdlib only: hands the bare name over
    "qtune.strategies": {"qtune.bare_names"},
    "qtune.data": {"qtune.config.declared"},  # the declared-config helpers: omegaconf only
    "qtune.models": {"qtune.data", "qtune.eval.greedy", "qtune.config.declared", "qtune.runs"},
    "qtune.runs": set(),
    "qtune.eval": {"qtune.data", "qtune.config.declared", "qtune.runs"},
    "qtune.pruning": {"qtune.strategies", "qtune.kernels", "qtune.data", "qtune.runs"},
    "qtune.lightning": {"qtune.pruning", "qtune.strategies", "qtune.kernels", "qtune.data", "qtune.runs"},
    "qtune.hf": {"qtune.pruning", "qtune.strategies", "qtune.kernels", "qtune.data", "qtune.models", "qtune.runs"},
    "qtune.report": {"qtune.data", "qtune.eval", "qtune.strategies", "qtune.runs"},
}
NO_LIGHTNING = (
    "qtune.kernels",
    "qtune.strategies",
    "qtune.data",
    "qtune.models",
    "qtune.runs",
    "qtune.eval",
    "qtune.pruning",
    "qtune.hf",
    "qtune.report",
)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of the modules a file imports, at top level or inside functions."""
    name = module_name(path)
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from . import x` imports x
    return found


def files(part: str) -> list[Path]:
    folder = next(f for f, pkg in FOLDERS.items() if part == pkg or part.startswith(pkg + "."))
    sub = part[len(FOLDERS[folder]) :].lstrip(".").replace(".", "/")
    return sorted((ROOT / folder / sub).glob("*.py"))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, stack + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def kernels_graph() -> dict[str, set[str]]:
    """kernels module -> the sibling modules it imports."""
    mods = {p.stem for p in (ROOT / "kernels").glob("*.py")} - {"__init__"}
    return {
        m: {n.split(".")[2] for n in imports(ROOT / "kernels" / f"{m}.py") if n.startswith("qtune.kernels.")} & mods
        for m in mods
    }


def test_import_graph_of_kernels_is_acyclic():
    graph = kernels_graph()
    assert graph["dispatch"] and graph["logits"], "the parser found no imports: is it broken?"
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle in kernels/: {' -> '.join(cycle)}"
    assert graph["formula"] == graph["reference"] == set()  # pure math imports no sibling


def package_graph() -> dict[str, set[str]]:
    """Every module of qtune, qtune.strategies and qtune.kernels -> the modules of those it
    imports, at top level or inside functions (a parent package counts as its __init__)."""
    paths = {module_name(p): p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = {n for n in imports(path) if n in paths}
        graph[name] = {
            t for t in targets if t != name and not name.startswith(t + ".") and not t.startswith(name + ".")
        }
    return graph


def test_import_graph_of_the_whole_package_is_acyclic():
    graph = package_graph()
    assert "qtune.pruning.core" in graph and graph["qtune.pruning.core"], "the walk found nothing"
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_cycle_finder_finds_the_old_circle():
    """The circle this test guards against: formula -> dispatch -> formula, and warmup."""
    old = {
        "formula": {"dispatch"},
        "dispatch": {"formula", "triton_stats"},
        "triton_stats": {"warmup"},
        "warmup": {"dispatch"},
    }
    assert find_cycle(old) is not None


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_what_it_may(part):
    may = ALLOWED[part] | {part}
    bad: dict[str, set[str]] = {}
    for path in files(part):
        for name in imports(path):
            top = name.split(".")[0]
            outside = top == "qtune" and not any(name == m or name.startswith(m + ".") for m in may)
            if outside or (part in NO_LIGHTNING and top in ("lightning", "pytorch_lightning")):
                bad.setdefault(path.relative_to(ROOT).as_posix(), set()).add(name)
    assert not bad, f"{part} may import only {sorted(may)} of qtune (and no Lightning): {bad}"


def _loaded_after(imports_: str) -> set[str]:
    import subprocess
    import sys

    code = f"import sys; {imports_}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_pruning_core_loads_without_any_trainer():
    """The core (plans, scores, history, state) is the part both trainer integrations sit on."""
    loaded = _loaded_after("import qtune.pruning.core")
    assert "torch" in loaded  # the probe sees what was imported
    assert not loaded & {"lightning", "pytorch_lightning", "lightning_fabric", "transformers"}


def test_the_hf_adapter_loads_without_lightning():
    loaded = _loaded_after("import qtune.hf")
    assert "transformers" in loaded
    assert not loaded & {"lightning", "pytorch_lightning", "lightning_fabric"}
