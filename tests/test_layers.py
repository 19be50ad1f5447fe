"""The house's rules, read from the code: imports run one way, no circles, no private names shared.

cli -> (train | infer | merge | diagnose | hub) -> model -> tasks -> data -> metrics -> the bottom
(config, errors, events, outputs). `train` may also use `infer` (evaluation during training);
nothing else at that level uses a sibling. Each subpackage's docstring says the same in words.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "paligemma_cli"
LAYERS = {  # a part may import parts of a lower number only (and itself)
    "__init__": 0, "errors": 0, "config": 0, "events": 0, "outputs": 0,
    "metrics": 1, "data": 2, "tasks": 3, "model": 4,
    "infer": 5, "merge": 5, "diagnose": 5, "hub": 5, "train": 6, "study": 6,
    "cli": 7, "__main__": 8,
}
ALSO_ALLOWED = {("train", "infer")}
BOTTOM_ORDER = ["__init__", "errors", "config", "events", "outputs"]  # within the bottom: only leftwards


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every paligemma_cli import, top-level or local."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("paligemma_cli"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("paligemma_cli")]
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _edges() -> list[tuple[str, str, list[str]]]:
    modules = _modules()
    edges = []
    for name, path in modules.items():
        name = name.removesuffix(".__init__")
        for target, names in _imports(path):
            # `from paligemma_cli.tasks import sources` imports the module tasks.sources
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules or f"{target}.{n}.__init__" in modules]
            edges += [(name, s, []) for s in subs] or [(name, target, names)]
    return edges


def test_every_part_has_a_layer():
    parts = {_part(m) for m in _modules()}
    assert parts <= set(LAYERS), f"new part(s) without a layer: {parts - set(LAYERS)}"


def test_imports_run_one_way():
    wrong = []
    for source, target, _ in _edges():
        a, b = _part(source), _part(target)
        if a == b or (a, b) in ALSO_ALLOWED:
            continue
        if LAYERS[a] == LAYERS[b] == 0:
            ok = BOTTOM_ORDER.index(b) < BOTTOM_ORDER.index(a)
        else:
            ok = LAYERS[b] < LAYERS[a]
        if not ok:
            wrong.append(f"{source} imports {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_module_circles():
    graph: dict[str, set[str]] = {}
    modules = {m.removesuffix(".__init__") for m in _modules()}
    for source, target, _ in _edges():
        if target in modules and target != source:
            graph.setdefault(source, set()).add(target)
    seen: dict[str, int] = {}  # 1 = on the stack, 2 = done
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in seen:
                visit(nxt, stack + [nxt])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])
    # a package's __init__ importing its own modules is how a package shows its face, not a circle
    circles = [c for c in circles if not all(_part(m) == _part(c.split(" -> ")[0]) and
                                             m.count(".") <= 1 for m in c.split(" -> "))]
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("rule", ["no private names"])
def test_no_private_name_is_used_across_modules(rule):
    used = [f"{source} uses {target}.{n}" for source, target, names in _edges()
            for n in names if n.startswith("_") and not n.startswith("__") and target != source]
    assert not used, "\n".join(used)
