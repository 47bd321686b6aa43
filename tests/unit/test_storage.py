"""Files at any URI through Arrow's filesystems: the same calls on a local folder and on an
S3-compatible server (moto on 127.0.0.1), no Spark involved."""

from __future__ import annotations

import io

import pytest

from persona_spark.tables import storage
from tests.production_world import S3Server, local_or_s3_location

BUCKET = "files"


@pytest.fixture(scope="module")
def s3():
    with S3Server.with_bucket(BUCKET) as server:
        yield server


@pytest.fixture(params=["local", "s3a"])
def base(request, tmp_path, monkeypatch):
    return local_or_s3_location(request, tmp_path, monkeypatch, BUCKET, "files")


def test_streams_round_trip_large_content_line_by_line(base):
    location = storage.join(base, "deep", "lines.jsonl")
    lines = [f'{{"id": {i}, "pad": "{"x" * 200}"}}\n'.encode() for i in range(5000)]  # ~1 MB, several chunks
    with storage.open_output(location) as out:
        for line in lines:
            out.write(line)
    with storage.open_input(location) as stream:
        assert list(io.BufferedReader(stream)) == lines
    assert storage.read_bytes(location) == b"".join(lines)


def test_move_remove_and_list(base):
    first, second = storage.join(base, "a", "one.txt"), storage.join(base, "a", "two.txt")
    storage.write_text(first, "1")
    storage.move(first, second)
    assert not storage.exists(first) and storage.read_text(second) == "1"
    storage.write_text(storage.join(base, "a", "b", "three.txt"), "3")
    assert storage.list_files(storage.join(base, "a"), ".txt") == [storage.join(base, "a", "b", "three.txt"), second]
    storage.remove(second)
    storage.remove(second)  # already gone: nothing happens
    assert not storage.exists(second)
    storage.remove_tree(storage.join(base, "a"))
    assert storage.list_files(storage.join(base, "a")) == []


def test_missing_file_is_file_not_found_naming_it(base):
    location = storage.join(base, "nowhere.json")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        storage.read_bytes(location)


@pytest.mark.parametrize("location, parent", [
    ("s3a://bucket/key/part.json", "s3a://bucket/key"),
    ("s3a://bucket/key/", "s3a://bucket"),
    ("/tmp/x/part.json", "/tmp/x"),
    ("dbfs:/runs/a/b.json", "dbfs:/runs/a"),
])
def test_parent_keeps_scheme_and_bucket(location, parent):
    assert storage.parent(location) == parent


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    blocker = tmp_path / "tables"
    blocker.write_text("not a folder")
    assert storage.file_in_the_way(str(blocker)) == str(blocker)
    assert storage.file_in_the_way(str(blocker / "deeper" / "still")) == str(blocker)
    assert storage.file_in_the_way(str(tmp_path / "new" / "folder")) is None
    assert storage.file_in_the_way("s3a://bucket/tables") is None
