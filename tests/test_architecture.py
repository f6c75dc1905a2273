"""The installed package's shape: no import cycles (imports inside functions count), one module that reads
or writes the process environment (fuserank.config), one that makes Redis clients (fuserank.redis_client)."""
from __future__ import annotations

import ast
import functools
import importlib.util
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGES = ["fuserank", "fuserank.api", "fuserank.batch", "fuserank.training", "fuserank.evaluation",
            "fuserank.schemas"]


@functools.lru_cache(maxsize=1)
def modules() -> dict[str, ast.Module]:
    """``{module name: its parsed source}`` for every module of the installed packages."""
    found = {}
    for package in PACKAGES:
        (folder,) = importlib.util.find_spec(package).submodule_search_locations
        for path in sorted(Path(folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = ast.parse(path.read_text(), str(path))
    return found


def imports(name: str, tree: ast.Module, known) -> set[str]:
    """The package's modules ``name`` imports, anywhere in it."""
    package = name if name in PACKAGES else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def where(tree_by_name, test) -> list[str]:
    return [f"{name}:{node.lineno}" for name, tree in tree_by_name.items() for node in ast.walk(tree) if test(node)]


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import cycle, each as ``a imports b imports ... a`` (one edge of each is dropped to find the next)."""
    graph, found = {name: set(deps) for name, deps in graph.items()}, []
    while True:
        try:
            tuple(TopologicalSorter(graph).static_order())
            return found
        except CycleError as exc:
            cycle = exc.args[1]                  # each is imported by the next
            found.append(" imports ".join(reversed(cycle)))
            graph[cycle[1]].discard(cycle[0])


def test_the_import_graph_has_no_cycle():
    found = {name: tree for name, tree in modules().items()
             if name in PACKAGES or name.rpartition(".")[0] in PACKAGES}
    assert cycles({name: imports(name, tree, found) for name, tree in found.items()}) == []


def test_the_graph_sees_imports_inside_functions():
    found = modules()
    assert "fuserank.training.ingest" in imports("fuserank.cli", found["fuserank.cli"], found)
    assert "fuserank.publish" in imports("fuserank.inspect", found["fuserank.inspect"], found)


def test_only_config_touches_the_environment_and_only_redis_client_makes_clients():
    found = modules()
    environ = where({n: t for n, t in found.items() if n != "fuserank.config"}, lambda node: (
        isinstance(node, ast.Attribute) and _dotted(node) in ("os.environ", "os.getenv", "os.putenv", "os.unsetenv"))
        or (isinstance(node, ast.ImportFrom) and node.module == "os"
            and {a.name for a in node.names} & {"environ", "getenv", "putenv"}))
    clients = where({n: t for n, t in found.items() if n != "fuserank.redis_client"}, lambda node: (
        isinstance(node, ast.Attribute) and node.attr in ("from_url", "ConnectionPool")
        and _dotted(node.value).endswith(("Redis", "redis")))
        or (isinstance(node, ast.Call) and _dotted(node.func) in ("redis.Redis", "Redis", "redis.StrictRedis")))
    assert environ == [] and clients == [], f"os.environ outside fuserank.config: {environ}; " \
                                            f"Redis clients outside fuserank.redis_client: {clients}"
