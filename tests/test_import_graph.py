"""The package's import graph: no circles, and the algorithm never imports the application.

Every import statement that can run counts, wherever it is (module level, inside functions
or methods): a function-local import closes a circle just as well, only later. Imports under
``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import rllib_lamo

PACKAGE_DIR = Path(rllib_lamo.__file__).parent
APPLICATION = "rllib_lamo.experiments"
# Re-export modules at the application's old paths (see their docstrings): they import the
# application by design, and nothing in the package may import them.
COMPATIBILITY_MODULES = {
    "rllib_lamo.cli",
    "rllib_lamo.experiment",
    "rllib_lamo.progress",
    "rllib_lamo.report",
    "rllib_lamo.tracking",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that a module imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    imported: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module; `from module import name` not.
            submodules = {f"{base}.{alias.name}" for alias in node.names}
            found = submodules & known
            imported.update(found or {base})
    return {module for module in imported if module in known and module != name}


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree except those under ``if TYPE_CHECKING:``."""
    nodes, pending = [], [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return nodes


def _is_type_checking(test: ast.expr) -> bool:
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(path, name, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_parser_sees_function_local_imports_but_not_type_checking_ones() -> None:
    graph = import_graph()
    # `rllib_lamo.__init__` loads the algorithm lazily, inside `__getattr__`.
    assert "rllib_lamo.lamo" in graph["rllib_lamo"]
    assert "rllib_lamo.experiments.tracking" in graph["rllib_lamo.experiments.cli"]
    source = "if TYPE_CHECKING:\n    import a\nelse:\n    import b\n"
    imports = [n for n in runtime_nodes(ast.parse(source)) if isinstance(n, ast.Import)]
    assert [alias.name for node in imports for alias in node.names] == ["b"]


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_algorithm_never_imports_the_application() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if not module.startswith(APPLICATION) and module not in COMPATIBILITY_MODULES
        for target in sorted(targets)
        if target.startswith(APPLICATION)
    ]
    assert not upward, upward


def test_nothing_imports_the_compatibility_modules() -> None:
    users = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in sorted(targets & COMPATIBILITY_MODULES)
    ]
    assert not users, users
