"""The import graph of the packages, read from the source with `ast` (every import statement, also inside
functions and `TYPE_CHECKING` blocks): imports go downward only (`streamlit_app`, `benchmarks` -> `tracker`,
`training` -> `model`; `tracker` and `training` never import each other; nothing imports `streamlit_app` or
`benchmarks`, nor the `cape_track` namespace root), and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "tracker", "training", "streamlit_app", "benchmarks", "samples")
# What each package may import of ours (itself always).
ALLOWED = {
    "model": set(),
    "tracker": {"model"},
    "training": {"model"},
    "streamlit_app": {"model", "tracker"},
    "benchmarks": {"model", "tracker", "training"},
    "samples": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["cape_track", *parts])


def imports_of(path: Path) -> set[str]:
    """The `cape_track...` modules `path` imports, relative imports resolved."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "cape_track"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` may name a submodule
                found |= {
                    f"{target}.{a.name}"
                    for a in node.names
                    if (ROOT / Path(*target.split(".")[1:]) / f"{a.name}.py").exists()
                }
            else:
                target = node.module or ""
            if target.split(".")[0] == "cape_track":
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert len(modules) > 50, "the walk found the packages"
    return {name: {t for t in imports_of(path) if t != name} for name, path in modules.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def test_imports_go_downward_only() -> None:
    wrong = sorted(
        f"{m} imports {t}"
        for m, targets in graph().items()
        for t in targets
        if package_of(t) != package_of(m) and package_of(t) not in ALLOWED[package_of(m)]
    )
    assert wrong == []


def test_no_import_cycles() -> None:
    edges = graph()
    # Only edges between walked modules; a package import (`cape_track.model`) counts as its __init__.
    edges = {m: {t for t in targets if t in edges} for m, targets in edges.items()}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt) :] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    # A package's __init__ naming its own submodules lazily is not a cycle: it imports them as strings only.
    assert cycles == []


if __name__ == "__main__":  # `python tests/test_imports.py`: the graph between packages, with edge counts
    counts: dict[tuple[str, str], int] = {}
    for module, targets in graph().items():
        for target in targets:
            if package_of(target) != package_of(module):
                key = (package_of(module), package_of(target))
                counts[key] = counts.get(key, 0) + 1
    for (source, target), n in sorted(counts.items()):
        print(f"{source} -> {target}: {n} imports")
