"""The packages depend one way (docs/architecture.md): this walks every import in
learnsparse/ and fails on an import circle, or on an import that a package's allowed
dependencies do not include."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "learnsparse"

# What each package may import, besides itself. `learnsparse/__init__.py` (the package's face)
# may import anything; `configs` holds no code.
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "layers": {"core"},
    "models": {"core", "layers"},
    "export": {"core", "layers"},
    "sparsity": {"core", "layers", "export"},
    "distill": {"core"},
    "engine": {"core", "data", "models"},
    "cli": {"core", "engine", "export"},
}
# Top-level modules outside a subpackage, and the package they belong to.
LOOSE = {"cli": "cli", "config_errors": "cli"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path], source: str | None = None) -> set[str]:
    """The learnsparse modules `name` imports. `from package import submodule` is an import of
    the submodule (the package's face is loaded on the way, but names nothing)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            submodules = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules]
            targets = submodules if len(submodules) == len(node.names) else [source]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != name and target.startswith("learnsparse"):
                out.add(target)
    return out


def _package(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the face
    return LOOSE.get(parts[1], parts[1]) if len(parts) == 2 else parts[1]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_package_is_placed():
    packages = {_package(m) for m in _modules()} - {None, "configs"}
    assert packages <= set(ALLOWED), f"packages without a place in ALLOWED: {sorted(packages - set(ALLOWED))}"


def _wrong_arrows(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        source = _package(module)
        if source is None:
            continue
        for target in targets:
            dest = _package(target)
            if dest is None:
                wrong.append(f"{module} imports the package face")
            elif dest != source and dest not in ALLOWED[source]:
                wrong.append(f"{module} -> {target} ({source} may import {sorted(ALLOWED[source]) or 'nothing'})")
    return wrong


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
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
                circles.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_import_runs_against_the_layers():
    wrong = _wrong_arrows(_graph())
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    circles = _circles(_graph())
    assert not circles, circles


def test_the_checks_see_a_wrong_import_and_a_circle():
    """The walk itself: an export module importing the trainer, and two core modules importing
    each other, are caught."""
    modules = _modules()
    graph = _graph()
    fake = "from learnsparse.engine.trainer import Trainer\nfrom . import verify\n"
    graph["learnsparse.export.fake"] = _imports("learnsparse.export.fake", ROOT / "export" / "fake.py", modules, fake)
    assert graph["learnsparse.export.fake"] == {"learnsparse.engine.trainer", "learnsparse.export.verify"}
    assert _wrong_arrows(graph) == ["learnsparse.export.fake -> learnsparse.engine.trainer "
                                    "(export may import ['core', 'layers'])"]
    graph["learnsparse.core.errors"] = graph["learnsparse.core.errors"] | {"learnsparse.core.record"}
    graph["learnsparse.core.record"] = graph["learnsparse.core.record"] | {"learnsparse.core.errors"}
    assert ["learnsparse.core.errors", "learnsparse.core.record"] in _circles(graph)


def test_the_layer_index_lists_every_layer_type_file():
    """A built-in layer type is one file plus one line in learnsparse/layers/__init__.py."""
    index = (ROOT / "layers" / "__init__.py").read_text()
    registering = [p.stem for p in (ROOT / "layers").glob("*.py") if "register_layer_type(" in p.read_text()]
    assert registering
    missing = [stem for stem in registering if f"from .{stem} import" not in index]
    assert not missing, f"layer files not in the layer index: {missing}"
