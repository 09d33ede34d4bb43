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


CONF = PACKAGE.parent / "conf"
# Where a config group's dotted paths may point (a trained codec's LightningModule is found through
# conf/model/<codec>.yaml, so conf/codec names nothing in medcomp.models).
ROOMS = {"codec": "medcomp.codecs.", "data": "medcomp.data.", "model": "medcomp.models."}


def conf_paths() -> list[tuple[str, str, str, str]]:
    """(file, group, key, dotted path) of every medcomp dotted path a YAML file under conf/ holds."""
    import yaml

    out = []

    def walk(node, file, group):
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and value.startswith("medcomp."):
                    out.append((file, group, key, value))
                walk(value, file, group)
        elif isinstance(node, list):
            for value in node:
                walk(value, file, group)

    for path in sorted(CONF.rglob("*.yaml")):
        walk(yaml.safe_load(path.read_text()), str(path.relative_to(CONF)), path.relative_to(CONF).parts[0])
    return out


def test_conf_paths_point_into_their_room_and_exist():
    import importlib

    paths = conf_paths()
    assert len(paths) > 20
    for file, group, key, dotted in paths:
        module, _, name = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), name), f"conf/{file}: {key}: {dotted} does not exist"
        if group in ROOMS:
            assert dotted.startswith(ROOMS[group]), f"conf/{file}: {key}: {dotted} is outside {ROOMS[group]}*"


def test_a_file_format_is_written_and_read_in_one_module():
    """Every codec decoder a conf/codec entry names sits in the module that builds that format's containers."""
    import yaml

    for path in sorted((CONF / "codec").glob("*.yaml")):
        decoder = (yaml.safe_load(path.read_text()) or {}).get("decoder")
        if decoder:
            source = (PACKAGE.parent / (decoder.rpartition(".")[0].replace(".", "/") + ".py")).read_text()
            assert "Container(" in source, f"{path.name}: {decoder}'s module does not write the format it reads"


def test_models_are_asked_through_their_contracts_not_hasattr():
    """medcomp.models.contracts declares what a task may ask of a model; nothing probes a model with hasattr."""
    import re

    probe = re.compile(r"hasattr\((self\.)?(model|fitted\.model|model_obj|module)\b")
    files = [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "experiments").glob("*.py")]
    found = [f"{p.name}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1) if probe.search(line)]
    assert found == []


def test_one_width_solver():
    """A network's width for a byte budget is solved in one place (medcomp.target.widest_fitting): no module
    solves the SIREN's quadratic or walks a width down on its own."""
    import re

    solving = re.compile(r"math\.sqrt\(b \* b|width -= 1|while width")
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if solving.search(line)]
    assert found == []
    users = [p.stem for p in PACKAGE.rglob("*.py") if re.search(r"\bwidest_(fitting|siren)\(", p.read_text())]
    assert {"siren", "unicompress", "unicompress_student", "target"} <= set(users)


def test_one_classification_datamodule():
    """Kermany, PneumoniaMNIST and the catalogue's labelled radiographs are served by one DataModule."""
    import re

    declared = [f"{p.relative_to(PACKAGE)}:{m}" for p in PACKAGE.rglob("*.py")
                for m in re.findall(r"class (\w+)\((?:L\.)?LightningDataModule\):\n(?:    .*\n|\n)*?    is_classification = True",
                                    p.read_text())]
    assert declared == ["data/cxr.py:RadiographClassificationDataModule"]
