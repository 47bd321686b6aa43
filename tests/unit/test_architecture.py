"""The package's layers hold: no import runs back up a layer, and no modules import each other in a loop."""

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
