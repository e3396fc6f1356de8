#!/usr/bin/env python3
"""The import graph of the xlpy package, read with ``ast`` (nothing is imported).

    python3 tools/import_graph.py            module -> module edges
    python3 tools/import_graph.py --layers   edges between top-level layers, with counts
    python3 tools/import_graph.py --check    the layering rules; exit 1 on a violation
    python3 tools/import_graph.py --root DIR ...   the same for another tree's package, e.g.
        git archive 63b62bd xlpy | tar -x -C /tmp/before && \
        python3 tools/import_graph.py --root /tmp/before/xlpy --check

Every ``import`` counts, including those inside functions and ``TYPE_CHECKING``
blocks: a deferred import is still a dependency of the module that makes it.
tests/test_layers.py runs ``--check``'s rules.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "xlpy"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# (importing layer prefix, forbidden imported prefixes, why)
RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "xlpy.stream",
        ("xlpy.binding", "xlpy.api", "xlpy.cli", "xlpy.backends", "xlpy.receiver",
         "xlpy.toolstack", "xlpy.repro"),
        "the stream layer is the bottom: bytes and records only",
    ),
    (
        "xlpy.receiver",
        ("xlpy.binding", "xlpy.api", "xlpy.cli", "xlpy.backends", "xlpy.repro"),
        "the simulated receivers know streams, never the binding or front ends",
    ),
    (
        "xlpy.binding",
        ("xlpy.stream", "xlpy.receiver", "xlpy.api", "xlpy.cli", "xlpy.backends",
         "xlpy.repro"),
        "the binding is a thin layer over C: no stream or receiver logic",
    ),
    (
        "xlpy.operation",
        ("xlpy.",),
        "the bottom module imports nothing of xlpy",
    ),
    (
        "xlpy.backends",
        ("xlpy.api", "xlpy.cli", "xlpy.repro"),
        "backends are below the front ends",
    ),
)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path) -> Iterator[str]:
    """The xlpy modules a file imports (``from a import b`` yields a.b when a.b is a module)."""
    module = module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield sub if _exists(sub) else target


def _exists(module: str) -> bool:
    p = ROOT.parent.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def edges() -> set[tuple[str, str]]:
    """Every (importer, imported) pair of modules inside the package."""
    found: set[tuple[str, str]] = set()
    for path in sorted(ROOT.rglob("*.py")):
        src = module_name(path)
        for dst in imports(path):
            if dst != src:
                found.add((src, dst))
    return found


def _under(module: str, prefix: str) -> bool:
    if prefix.endswith("."):
        return module.startswith(prefix)
    return module == prefix or module.startswith(prefix + ".")


def violations(graph: set[tuple[str, str]] | None = None) -> list[str]:
    """One line per edge that breaks a layering rule, and one per import cycle."""
    graph = edges() if graph is None else graph
    out = []
    for src, dst in sorted(graph):
        for layer, forbidden, why in RULES:
            if _under(src, layer) and any(_under(dst, f) for f in forbidden):
                out.append(f"{src} -> {dst}: {why}")
    out += [" -> ".join(c) + ": import cycle" for c in cycles(graph)]
    return out


def cycles(graph: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    adj: dict[str, list[str]] = {}
    for s, d in graph:
        adj.setdefault(s, []).append(d)
        adj.setdefault(d, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(adj):
        if v not in index:
            visit(v)
    return sorted(comps)


def layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", action="store_true", help="edges between top-level layers")
    ap.add_argument("--check", action="store_true", help="check the layering rules")
    ap.add_argument("--root", type=Path, help="the xlpy package directory to read")
    args = ap.parse_args()
    if args.root is not None:
        global ROOT
        ROOT = args.root.resolve()
    graph = edges()
    if args.check:
        bad = violations(graph)
        print("\n".join(bad) if bad else f"ok: {len(graph)} edges, no upward edge, no cycle")
        return 1 if bad else 0
    if args.layers:
        counts = Counter((layer(s), layer(d)) for s, d in graph if layer(s) != layer(d))
        for (s, d), n in sorted(counts.items()):
            print(f"{s} -> {d} ({n})")
        return 0
    for s, d in sorted(graph):
        print(f"{s} -> {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
