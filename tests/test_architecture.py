"""The package's import graph keeps its shape: no loops, inference never reaches into
scoring, and model fabrication depends on no pipeline layer above it.

The graph is read from the source with `ast`, so imports inside functions count too (they
hide a loop from Python's import machinery, not from a reader)."""
from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "geoxray"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The geoxray module `name` refers to: itself, or the nearest enclosing module
    (`from geoxray.run import store` names the module geoxray.run.store; a name defined in
    a package's __init__ resolves to the package)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node except the bodies of `if TYPE_CHECKING:` (annotations only: never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """geoxray modules that `module` imports anywhere in its file (top level or inside
    functions), except type-checking-only imports."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, `level` steps up
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from a.b import c` imports module a.b.c when there is one, else a name of a.b
            targets = [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "geoxray":
                continue
            resolved = _resolve(target, modules)
            if resolved and resolved != module:
                found.add(resolved)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def arrows(graph: dict[str, set[str]], source: str, target: str) -> list[str]:
    """Imports from modules under `source` of modules under `target`."""
    def under(module: str, package: str) -> bool:
        return module == package or module.startswith(package + ".")

    return sorted(f"{m} -> {d}" for m, deps in graph.items() if under(m, source)
                  for d in deps if under(d, target))


# --- the checker itself ------------------------------------------------------------------
def test_the_graph_sees_imports_inside_functions_and_finds_a_loop():
    # known edges of the real package: a top-level and a function-level import
    graph = import_graph()
    assert len(graph) > 50  # the real package, not an empty folder
    assert "geoxray.infer.config" in graph["geoxray.config"]
    assert "geoxray.run.evaluate" in graph["geoxray.sweep.run"]  # inside point_fingerprint
    assert "geoxray.run.store" in graph["geoxray.run.evaluate"]  # `from geoxray.run import store`
    # a type-checking-only import is no runtime dependency (world_paint annotates World)
    assert "geoxray.data.world" not in graph["geoxray.data.world_paint"]
    # and a loop through three modules is reported as one component
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# --- the rules ----------------------------------------------------------------------------
def test_no_import_loops():
    assert cycles(import_graph()) == []


def test_inference_does_not_import_scoring():
    assert arrows(import_graph(), "geoxray.infer", "geoxray.score") == []


def test_model_fabrication_depends_on_no_pipeline_layer():
    graph = import_graph()
    for layer in ("geoxray.run", "geoxray.sweep", "geoxray.capacity"):
        assert arrows(graph, "geoxray.models", layer) == []
