"""The package's layers hold: no import runs back up a layer, and no modules import each other in a loop."""

import ast

from tests import architecture


def test_no_import_runs_back_up_a_layer():
    assert architecture.upward(architecture.imports(architecture.modules())) == []


def test_no_import_cycle():
    assert architecture.cycles(architecture.imports(architecture.modules())) == []


def test_the_check_sees_an_upward_arrow_and_a_cycle():
    arrows = {("config", "stages"), ("stages", "stages.demo"), ("stages.demo", "stages")}
    assert architecture.upward(arrows) == [("config", "stages")]
    assert architecture.cycles(arrows) == [["stages", "stages.demo"]]


def test_every_module_has_a_layer():
    for name in architecture.modules():
        architecture.layer(name)


def _writes_environment(node: ast.AST) -> bool:
    """``os.environ[...] = ...``, ``del os.environ[...]``, ``os.environ.setdefault/update/pop/...``, ``os.putenv``."""
    def is_environ(value):
        return isinstance(value, ast.Attribute) and value.attr == "environ"

    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
        return is_environ(node.value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        mutators = {"setdefault", "update", "pop", "popitem", "clear", "__setitem__"}
        return (is_environ(node.func.value) and node.func.attr in mutators) or node.func.attr in {"putenv", "unsetenv"}
    return False


def test_library_code_sets_no_environment_variable():
    """The caller's process environment is theirs: a notebook or a job that imports the package keeps it as it was."""
    found = [f"{name or '__init__'}:{node.lineno}" for name, path in architecture.modules().items()
             for node in ast.walk(ast.parse(path.read_text())) if _writes_environment(node)]
    assert found == []


def test_the_environment_check_sees_a_write():
    code = "import os\nos.environ['A'] = '1'\nos.environ.setdefault('B', '2')\nos.putenv('C', '3')\nx = os.environ.get('D')"
    assert sum(_writes_environment(node) for node in ast.walk(ast.parse(code))) == 3
