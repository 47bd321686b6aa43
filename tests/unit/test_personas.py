"""A persona file with a mistake fails with one line that names the file and the mistake."""

from __future__ import annotations

import pytest

from persona_spark.errors import UserError
from persona_spark.personas import load_persona_set


@pytest.mark.parametrize("name, content, message", [
    ("bad.yaml", "personas:\n  - name: [unclosed\n", "not valid YAML"),
    ("bad.json", '[{"name": "A",}]', "not valid JSON"),
    ("null.yaml", "- name: null\n  description: x\n", "persona #0 has no 'name' (nothing)"),
    ("blank.yaml", "- name: Pet Lover\n- name: '  '\n", "persona #1 has an empty 'name'"),
    ("number.yaml", "- name: 1.10\n", "persona #0 has no 'name' (1.1, not text: quote it)"),
    ("list.yaml", "- name: A\n  description: [a, b]\n", "persona #0 has no 'description'"),
    ("scalar.yaml", "- Pet Lover\n", "persona #0 is not a mapping"),
    ("mapping.yaml", "title: x\n", "expected a list of personas"),
    ("index.yaml", "- {name: A, index: 1}\n- {name: B, index: x}\n", "every 'index' must be a whole number"),
    ("twice.yaml", "- name: A\n- name: a\n", "persona names must be unique"),
    ("latin1.yaml", b"- name: Cr\xe8me\n", "not UTF-8 text"),
])
def test_a_bad_persona_file_names_the_file_and_the_mistake(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError) as error:
        load_persona_set(path)
    assert str(path) in str(error.value) and message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_persona_file_says_which_setting_names_it(tmp_path):
    with pytest.raises(UserError, match=r"persona set file not found: .*nowhere\.yaml \(the 'personas' setting\)"):
        load_persona_set(tmp_path / "nowhere.yaml")


def test_names_and_descriptions_are_kept_as_written(tmp_path):
    path = tmp_path / "set.yaml"
    path.write_text('title: shop\npersonas:\n  - name: \' Say "Cheese" Fan \'\n  - name: "2024"\n    description: null\n')
    personas = load_persona_set(path)
    assert (personas.names, personas.descriptions, personas.title) == (('Say "Cheese" Fan', "2024"), ("", ""), "shop")
