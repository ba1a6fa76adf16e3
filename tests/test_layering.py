"""The layering the folders show: the library core (fedhar/) never imports the Flower app
(simulations/) or the server strategies (strategies/), and no module imports another that
imports it back (imports inside functions count: they must not be a way around a cycle)."""

import ast
from pathlib import Path

import pytest

from fedhar import cli
from fedhar.errors import FedharError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedhar", "strategies", "simulations")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imported(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
    return {_ours(name) for name in found if name.split(".")[0] in PACKAGES} - {""}


def _ours(name: str) -> str:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def test_the_library_core_imports_neither_the_flower_app_nor_the_strategies():
    offenders = {f"{MODULES[m].relative_to(ROOT)} imports {dep}"
                 for m in MODULES if m.split(".")[0] == "fedhar"
                 for dep in imported(MODULES[m]) if dep.split(".")[0] != "fedhar"}
    assert not offenders, sorted(offenders)


def test_no_import_cycles_between_modules():
    graph = {m: imported(p) - {m} for m, p in MODULES.items()}
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(v):  # Tarjan's strongly connected components
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
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert not cycles, cycles
    assert len(graph) > 100  # the walk saw the whole code


def test_the_app_commands_come_from_entry_points():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"fl", "sweep", "deploy", "plot"} <= set(commands)  # pyproject.toml: fedhar.commands
    assert [ep.name for ep in cli.plugin_commands()][:4] == list(cli.APP_COMMANDS)


def test_a_broken_command_plugin_names_itself(monkeypatch):
    class Broken:
        name, value = "oops", "nowhere.at_all:register"

        def load(self):
            raise ImportError("No module named 'nowhere'")

    monkeypatch.setattr(cli, "plugin_commands", lambda: [Broken()])
    with pytest.raises(FedharError, match="command 'oops' .*'nowhere.at_all:register'.*No module named"):
        cli.build_parser()
