"""Files that are not tables (journal, report, recommender export, models, caches) at any URI.

Spark reaches a location through Hadoop's FileSystem; the Python side (driver code that writes a
report, executors that journal LLM answers, torch training reading an export) reaches the same
location through Arrow's filesystems, so one string works for both:

* a plain path (made absolute on the driver by the config), ``file:/...``
* ``s3a://bucket/key`` (also ``s3://``): S3 or any S3-compatible store; the endpoint comes from
  ``AWS_ENDPOINT_URL`` and the credentials from the standard AWS environment variables or an
  instance profile, never from configuration files
* ``dbfs:/...``: Databricks' FUSE mount ``/dbfs/...`` (``/Volumes/...`` paths are plain paths there)
* anything else Arrow or an installed fsspec implementation knows (``gs://``, ``abfss://``, ``hdfs://``)
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import uuid
from urllib.parse import urlparse

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")
S3_SCHEMES = ("s3a", "s3", "s3n")


def scheme(location: str) -> str | None:
    """``s3a`` for ``s3a://b/k``; None for a plain path."""
    match = _SCHEME.match(os.fspath(location))
    return match.group(1).lower() if match else None


def absolute(location: str) -> str:
    """A URI stays as it is; a plain path becomes absolute (the driver's view, which local executors share)."""
    location = os.fspath(location)
    return location if scheme(location) else os.path.abspath(os.path.expanduser(location))


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for paths and URIs alike (never through pathlib, which folds ``s3a://`` to ``s3a:/``)."""
    base = os.fspath(base)
    out = base.rstrip("/") if scheme(base) else base
    for part in parts:
        out = posixpath.join(out, part.strip("/")) if scheme(out) else os.path.join(out, part)
    return out


def parent(location: str) -> str:
    """The folder holding ``location`` (URIs keep their scheme and bucket)."""
    location = os.fspath(location)
    return location.rstrip("/").rsplit("/", 1)[0] if scheme(location) else os.path.dirname(location)


def is_local(location: str) -> bool:
    return scheme(location) in (None, "file")


@functools.cache
def _s3(endpoint: str | None, region: str):
    from pyarrow import fs

    options = {"region": region}
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
    return fs.S3FileSystem(**options)


def filesystem(location: str):
    """(Arrow filesystem, path inside it) for ``location``."""
    from pyarrow import fs

    location = os.fspath(location)
    kind = scheme(location)
    if kind is None:
        return fs.LocalFileSystem(), absolute(location)
    if kind == "file":
        return fs.LocalFileSystem(), urlparse(location).path
    if kind == "dbfs":
        return fs.LocalFileSystem(), "/dbfs/" + urlparse(location).path.lstrip("/")
    if kind in S3_SCHEMES:
        parsed = urlparse(location)
        return (_s3(os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("AWS_REGION", "us-east-1")),
                f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/"))
    try:
        return fs.FileSystem.from_uri(location)
    except Exception:  # noqa: BLE001 - Arrow does not know the scheme: try fsspec
        try:
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem
        except ImportError as error:
            raise ValueError(f"no filesystem for {location!r}: Arrow does not know {kind}:// and fsspec "
                             "is not installed") from error
        handler, path = fsspec.core.url_to_fs(location)
        return PyFileSystem(FSSpecHandler(handler)), path


def file_in_the_way(location: str) -> str | None:
    """The file that stops ``location`` from being a local folder (it, or the nearest existing parent, is a file),
    else None. Object stores have no such conflict; neither has a folder still to be made under a folder."""
    if not is_local(location):
        return None
    _, path = filesystem(location)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return None if os.path.isdir(path) else path


def exists(location: str) -> bool:
    from pyarrow import fs

    handle, path = filesystem(location)
    return handle.get_file_info(path).type != fs.FileType.NotFound


def makedirs(location: str) -> None:
    handle, path = filesystem(location)
    handle.create_dir(path, recursive=True)


def open_input(location: str):
    """A readable, seekable binary stream (close it, or use ``with``): large files are never held whole."""
    from pyarrow import fs

    handle, path = filesystem(location)
    if handle.get_file_info(path).type == fs.FileType.NotFound:
        raise FileNotFoundError(location)
    return handle.open_input_file(path)


def open_output(location: str):
    """A writable binary stream at ``location`` (parents made). An object appears only when the
    stream is closed; on a local disk a reader may see a part, so write to a temporary name and ``move``."""
    handle, path = filesystem(location)
    parent = posixpath.dirname(path) if not is_local(location) else os.path.dirname(path)
    if parent:
        handle.create_dir(parent, recursive=True)
    return handle.open_output_stream(path)


def read_bytes(location: str) -> bytes:
    with open_input(location) as stream:
        return stream.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str, data: bytes) -> None:
    """Replace ``location`` as a whole: a reader sees the old or the new content, never a part.

    Object stores give that per object; on a local disk the bytes go to a temporary file first.
    """
    target = location if not is_local(location) else f"{absolute(location)}.{uuid.uuid4().hex[:8]}.tmp"
    with open_output(target) as stream:
        stream.write(data)
    if target != location:
        move(target, location)


def move(source: str, target: str) -> None:
    """Rename a file within one filesystem (a copy and a delete on object stores)."""
    handle, path = filesystem(source)
    handle.move(path, filesystem(target)[1])


def remove(location: str) -> None:
    """Delete one file; nothing happens when it is not there."""
    from pyarrow import fs

    handle, path = filesystem(location)
    if handle.get_file_info(path).type == fs.FileType.File:
        handle.delete_file(path)


def create_exclusive(location: str, data: bytes) -> bool:
    """Write ``data`` at ``location`` only if nothing is there; whether this call created it.

    Of two callers racing for one location exactly one gets True on a local disk (an exclusive create, which
    a reader may catch with part of ``data`` for an instant) and on S3 (a conditional put, ``If-None-Match:
    *``, through boto3 when it is installed). Elsewhere (S3 without boto3, ``gs://``, ``abfss://``, ...) the
    object is written when absent and read back: a racer whose write lands between this call's check and its
    read back makes it lose, but one that writes after that read wins as well. ``data`` must differ between
    callers (name the writer) for the read back to tell them apart.
    """
    kind = scheme(location)
    if is_local(location):
        path = filesystem(location)[1]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        return True
    if kind in S3_SCHEMES:
        try:
            return _s3_put_if_absent(location, data)
        except ImportError:
            pass
    if exists(location):
        return False
    write_bytes(location, data)
    return read_bytes(location) == data


def _s3_put_if_absent(location: str, data: bytes) -> bool:
    import boto3
    from botocore.exceptions import ClientError

    parsed = urlparse(location)
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
                          region_name=os.environ.get("AWS_REGION", "us-east-1"))
    try:
        client.put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data, IfNoneMatch="*")
    except ClientError as error:
        # 412: the object exists; 409: another conditional put on the key is in flight (one of them wins)
        if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise
    return True


def modified(location: str) -> float | None:
    """When ``location`` was last written (seconds since the epoch), None when it is not there."""
    from pyarrow import fs

    handle, path = filesystem(location)
    info = handle.get_file_info(path)
    return None if info.type == fs.FileType.NotFound or info.mtime is None else info.mtime.timestamp()


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def list_files(location: str, suffix: str = "") -> list[str]:
    """Every file under ``location`` (recursively) ending in ``suffix``, as locations, sorted."""
    from pyarrow import fs

    handle, path = filesystem(location)
    if handle.get_file_info(path).type != fs.FileType.Directory:
        return []
    infos = handle.get_file_info(fs.FileSelector(path, recursive=True))
    found = sorted(i.path for i in infos if i.type == fs.FileType.File and i.path.endswith(suffix))
    return [join(location, posixpath.relpath(p, path)) for p in found]


def remove_tree(location: str) -> None:
    from pyarrow import fs

    handle, path = filesystem(location)
    if handle.get_file_info(path).type == fs.FileType.Directory:
        handle.delete_dir(path)

