"""The openai_batch backend's input files: split by lines and bytes, every line whole and in order."""

from __future__ import annotations

import pytest

from persona_spark.labeling.batch import InputFile, roll_lines


def test_input_files_are_split_by_lines_and_bytes(tmp_path):
    source = tmp_path / "part-0"
    source.write_text("".join(f'{{"custom_id": "{i}", "pad": "{"x" * (i % 7)}"}}\n' for i in range(100)))
    files = roll_lines([source], tmp_path / "out", max_lines=30, max_bytes=1000)
    assert sum(f.lines for f in files) == 100
    assert all(f.lines <= 30 and f.bytes <= 1000 for f in files)
    assert b"".join(open(f.path, "rb").read() for f in files) == source.read_bytes()
    assert all(isinstance(f, InputFile) for f in files)
    with pytest.raises(ValueError, match="over labeling.batch.max_bytes"):
        roll_lines([source], tmp_path / "tiny", max_lines=30, max_bytes=20)
