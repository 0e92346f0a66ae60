"""Imports run one way (issue 29, section 4): in the graph of vlret's imports, module-level and
function-level alike, no module reaches itself."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The vlret modules ``name`` imports anywhere in its file (an imported name that is a module counts
    as that module; otherwise its package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("vlret") and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, groups, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 100  # the graph was read, function-level imports included:
    assert {"vlret.evaluate.reranked", "vlret.evaluate.packaging"} <= graph["vlret.evaluate.api"]
    assert "vlret.models.conse" in graph["vlret.models.registry"]
    assert _cycles(graph) == []


#: vlret's packages from the lowest floor to the highest (docs/architecture.md); the modules at the package's
#: top (errors, schema, claims, locks, ...) are floor 0. A module imports only from its own floor or lower.
FLOORS = [
    "data",
    "models",
    "losses",
    "evaluate",
    "rerank",
    "train",
    "index",
    "serve",
    "report",
    "demo",
    "suite",
    "cli",
]


def _floor(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return FLOORS.index(part) + 1 if part in FLOORS else 0


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if _floor(b) > _floor(a))


def test_the_floor_check_finds_a_planted_upward_import():
    assert _floor("vlret.errors") == 0 and _floor("vlret.evaluate.api") < _floor("vlret.rerank.visa.run")
    graph = {"vlret.evaluate.api": {"vlret.rerank.visa.run", "vlret.models.base"}, "vlret.models.base": set()}
    assert _upward(graph) == ["vlret.evaluate.api -> vlret.rerank.visa.run"]


def test_no_module_imports_from_a_higher_floor():
    modules = _modules()
    assert {m.split(".")[1] for m in modules if m.count(".") >= 2} <= set(FLOORS)  # every package has a floor
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _upward(graph) == []
