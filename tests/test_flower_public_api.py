"""fedhar's library code (fedhar/, strategies/, simulations/) uses only Flower's public API:
the modules Flower documents in its API reference. Static (ast), so it stays fast."""

import ast
import importlib.util
import io
import logging
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("fedhar", "strategies", "simulations")
PUBLIC = {  # Flower 1.41's API reference: the new packages and the legacy top-level re-exports
    "flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.serverapp.strategy", "flwr.simulation",
    "flwr.common", "flwr.client", "flwr.server",
}
# The exceptions, documented where they are used. simulations.inline.task_identity: Flower's
# Message constructor reads TaskIdentity, which only Flower's own runtimes set.
# simulations/secure_aggregation.py: Flower's SecAgg+ speaks its legacy records (the fitres.*
# layout, the protocol's record keys, the workflow's round record), defined only there.
ALLOWED = {("simulations/inline.py", "flwr.supercore.task_identity"),
           ("simulations/secure_aggregation.py", "flwr.compat.common.recorddict_compat"),
           ("simulations/secure_aggregation.py", "flwr.common.secure_aggregation.secaggplus_constants"),
           ("simulations/secure_aggregation.py", "flwr.server.workflow.constant")}
FLWR_DIR = Path(importlib.util.find_spec("flwr").origin).parent  # finding it does not import it


def module_file(name: str) -> Path | None:
    path = FLWR_DIR.joinpath(*name.split(".")[1:])
    for file in (path.with_suffix(".py"), path / "__init__.py"):
        if file.is_file():
            return file
    return None


def names_bound_in(file: Path) -> set[str]:
    """Names a module binds at its top level or lists in ``__all__`` (``from flwr.simulation
    import run_simulation`` gets the function ``flwr/simulation/__init__.py`` exports, not the
    submodule of that name)."""
    names = set()
    for node in ast.parse(file.read_text()).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            names |= set(ast.literal_eval(node.value))
    return names


def imports_submodule(module: str, name: str) -> bool:
    """``from module import name`` imports the submodule ``module.name``."""
    package = module_file(module)
    return (module_file(f"{module}.{name}") is not None and package is not None
            and package.name == "__init__.py" and name not in names_bound_in(package))


def flwr_imports(tree: ast.AST):
    """(line, module) for every Flower module a file imports, including submodules imported
    by name (``from flwr.common import constant``) and ``import_module("flwr....")``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "flwr")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "flwr":
            yield node.lineno, node.module
            for a in node.names:
                if imports_submodule(node.module, a.name):
                    yield node.lineno, f"{node.module}.{a.name}"
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] == "flwr":
                    yield node.lineno, arg.value


def dict_writes(tree: ast.AST):
    """Lines that assign into an object's ``__dict__`` (how Flower's internals set message ids)."""
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AugAssign | ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Attribute) and t.value.attr == "__dict__":
                yield node.lineno


def library_files():
    for folder in LIBRARY:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), filename=str(path))


def test_the_checks_catch_what_they_should():
    code = ast.parse("import flwr.supercore.log\nfrom flwr.common.constant import ErrorCode\n"
                     "from flwr.common import constant, log\nfrom flwr.serverapp import strategy\n"
                     "from flwr.simulation import run_simulation\n"
                     "import importlib\nimportlib.import_module('flwr.server.utils')\nm.metadata.__dict__['_x'] = 1\n")
    found = {m for _, m in flwr_imports(code)}
    assert found - PUBLIC == {"flwr.supercore.log", "flwr.common.constant", "flwr.server.utils"}
    assert list(dict_writes(code)) == [8]


def test_library_imports_only_public_flower_modules():
    private, used = [], set()
    for rel, tree in library_files():
        for line, module in flwr_imports(tree):
            if (rel, module) in ALLOWED:
                used.add((rel, module))
            elif module not in PUBLIC:
                private.append(f"{rel}:{line}: {module}")
    assert private == [], "non-public Flower modules (use flwr.app, flwr.serverapp, ... or a local equivalent)"
    assert used == ALLOWED  # an exception no longer needed is removed from ALLOWED


def test_library_writes_no_object_dict():
    writes = [f"{rel}:{line}" for rel, tree in library_files() for line in dict_writes(tree)]
    assert writes == [], "writes into __dict__ (Flower's objects: use the public constructors instead)"


def test_quiet_flower_sends_no_colour_codes_off_a_terminal(monkeypatch):
    """Flower's console colours have no public switch: fedhar.console sets its handler's flag."""
    from flwr.common import log

    from fedhar.console import FLOWER_LOGGER, quiet_flower

    monkeypatch.delenv("FEDHAR_VERBOSE", raising=False)
    quiet_flower()  # stderr is not a terminal under pytest
    handlers = [h for h in logging.getLogger(FLOWER_LOGGER).handlers if type(h) is not logging.FileHandler
                and isinstance(h, logging.StreamHandler)]
    assert handlers and all(h.level == logging.WARNING for h in handlers)
    out = io.StringIO()
    saved = [h.setStream(out) for h in handlers]
    try:
        log(logging.INFO, "not shown")
        log(logging.WARNING, "shown plainly")
    finally:
        for h, stream in zip(handlers, saved):
            h.setStream(stream)
    assert "shown plainly" in out.getvalue() and "not shown" not in out.getvalue()
    assert "\x1b[" not in out.getvalue()
