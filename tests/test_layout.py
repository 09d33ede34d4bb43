"""The package's shape (issue 18): imports run one way — task → codec → container — with no cycle, and nothing
under medcomp/data imports the codecs."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "medcomp"


def import_graph() -> dict[str, set[str]]:
    """module → the medcomp modules it imports, at any depth of the file (lazy imports count too)."""
    modules = {}
    for p in PACKAGE.rglob("*.py"):
        name = ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = p
    graph = {}
    for name, p in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medcomp"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_no_import_cycle():
    graph, done, on_path = import_graph(), set(), []

    def visit(module):
        if module in on_path:
            raise AssertionError("import cycle: " + " → ".join(on_path[on_path.index(module):] + [module]))
        if module in done:
            return
        on_path.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert "medcomp.codecs.registry" in done and "medcomp.tasks.compress" in done


def test_data_imports_no_codec_module():
    graph = import_graph()
    upward = [(m, d) for m, deps in graph.items() if m.startswith("medcomp.data") for d in deps
              if d.startswith("medcomp.codecs")]
    assert upward == []
