"""The library's imports only run down the flow: no import circle, no module importing from a layer
above its own, and imports inside functions only where start-up time asks for them (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent.parent / "audit"
GROUND_FLOOR = {"names", "errors", "settings", "images", "boxformat", "signals"}
# Lowest first; packages of one layer do not import each other.
LAYERS = [GROUND_FLOOR, {"explain", "store"}, {"data"}, {"models"}, {"heads"}, {"score"}, {"scan"},
          {"review", "evaluate"}, {"pipeline"}, {"cli", ""}, {"__main__"}]
# Imports inside functions, allowed where they keep `import audit` and the CLI's start quick.
DEFERRED_IMPORTS_ALLOWED = {"audit.cli", "audit.data"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = LIBRARY.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported audit module, whether the import sits inside a function) for each import in ``path``."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    nested = {id(node) for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(function)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # ``from audit.x import y`` imports the module audit.x.y where y is one
            targets = [f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base for alias in node.names]
        else:
            continue
        found += [(target, id(node) in nested) for target in targets if target.split(".")[0] == "audit"]
    return found


def _layer(module: str) -> tuple[int, str]:
    """(layer index, the package it counts as) of an audit module."""
    top = module.split(".")[1] if "." in module else ""
    package = "ground floor" if top in GROUND_FLOOR else top
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index, package
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS and docs/architecture.md")


def _graph() -> dict[str, list[tuple[str, bool]]]:
    return {_module_name(path): _imports(path) for path in sorted(LIBRARY.rglob("*.py"))}


def test_no_module_imports_from_a_layer_above_or_beside_it():
    upward = []
    for module, imports in _graph().items():
        layer, package = _layer(module)
        for target, _inside in imports:
            target_layer, target_package = _layer(target)
            if target_package != package and target_layer >= layer:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_no_import_circle():
    graph = {module: sorted({target for target, _ in imports if target != module})
             for module, imports in _graph().items()}
    state: dict[str, str] = {}
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in graph.get(module, []):
            if target not in graph:
                continue
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]) if target in path else target)
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_imports_inside_functions_only_where_start_up_time_needs_them():
    deferred = [f"{module} -> {target}" for module, imports in _graph().items() for target, inside in imports
                if inside and module not in DEFERRED_IMPORTS_ALLOWED]
    assert not deferred, "imports inside functions:\n" + "\n".join(deferred)


def test_the_walk_sees_imports_inside_functions_and_package_modules():
    """The checks above would pass vacuously if the walk missed these: the CLI's deferred imports, and
    ``from audit.store import db`` as the module audit.store.db."""
    imports = _graph()
    assert ("audit.pipeline", True) in imports["audit.cli"]
    assert ("audit.store.db", False) in imports["audit.scan.run"]
