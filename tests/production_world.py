"""Real production pieces on 127.0.0.1: an S3-compatible server (moto), a Spark standalone cluster
(a master and workers in their own JVMs), and the pipeline run through the CLI in a child process."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyspark
import yaml

from tests.conftest import TEST_JVM_OPTIONS

PYTHON = sys.executable
REPO_ROOT = Path(__file__).resolve().parents[1]
SPARK_CLASS = str(Path(sys.executable).with_name("spark-class"))
SPARK_HOME = str(Path(pyspark.__file__).parent)  # pip's pyspark is a whole Spark distribution


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f}s")


@dataclass
class S3Server:
    """moto's S3 server in its own process; ``env`` is what a client of it needs (test credentials only)."""

    port: int
    process: subprocess.Popen

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def delta_options(self) -> dict[str, str]:
        """storage_options for delta-rs reading the same tables."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}

    @classmethod
    def start(cls) -> S3Server:
        port = free_port()
        process = subprocess.Popen([PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port)
        return cls(port, process)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    @classmethod
    @contextmanager
    def with_bucket(cls, bucket: str) -> Iterator[S3Server]:
        """A started server holding one empty bucket, stopped on exit."""
        server = cls.start()
        try:
            server.client().create_bucket(Bucket=bucket)
            yield server
        finally:
            server.stop()


@dataclass
class StandaloneCluster:
    """A Spark standalone master and ``n`` one-core workers, each in its own process group, with its
    own work and scratch directories (nothing shared between them but the network)."""

    root: Path
    env: dict[str, str]
    workers: int = 2
    master_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        scratch = self.root / name
        (scratch / "local").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "SPARK_HOME": SPARK_HOME, "SPARK_LOCAL_DIRS": str(scratch / "local"),
               "SPARK_LOG_DIR": str(scratch), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_JAVA_OPTS": TEST_JVM_OPTIONS}
        log = open(scratch / "out.log", "w")
        return subprocess.Popen([SPARK_CLASS, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start(self) -> StandaloneCluster:
        self.processes.append(self._spawn(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                           "--port", str(self.master_port), "--webui-port", str(free_port())], "master"))
        wait_for_port(self.master_port)
        for i in range(self.workers):
            work = self.root / f"worker{i}" / "work"
            work.mkdir(parents=True, exist_ok=True)
            self.processes.append(self._spawn(
                ["org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1", "--cores", "1",
                 "--memory", "1500m", "--work-dir", str(work), "--webui-port", str(free_port())], f"worker{i}"))
        self.wait_for_workers(self.workers)
        return self

    def wait_for_workers(self, n: int, timeout_s: float = 90.0) -> None:
        log = self.root / "master" / "out.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if log.exists() and log.read_text().count("Registering worker") >= n:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{n} workers did not register with {self.url}: see {log}")

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker ``i`` and its executor (its process group): a machine lost mid-job."""
        os.killpg(self.processes[1 + i].pid, signal.SIGKILL)

    def stop(self) -> None:
        for process in reversed(self.processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def local_connect_server_slot() -> Iterator[None]:
    """Held while a child process runs a local Spark Connect server: it binds the fixed port 15002
    (its client finds no other), so two pytest-xdist workers take turns."""
    with open(Path(tempfile.gettempdir()) / "persona-spark-connect-15002.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_conf(path: Path, settings: dict) -> str:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return str(path)


def run_stages(stages: list[str], conf: str, env: dict[str, str], cwd: Path, timeout_s: float = 1800,
               on_line=None) -> subprocess.CompletedProcess:
    """The CLI's stages, one after the other in one child process (one Spark session, as a job would)."""
    code = ("import sys\nfrom persona_spark.cli import main\n"
            f"for stage in {stages!r}:\n    rc = main([stage, '--conf', {conf!r}])\n    if rc: sys.exit(rc)\n")
    return run_python(code, env, cwd, timeout_s, on_line)


def run_python(code: str, env: dict[str, str], cwd: Path, timeout_s: float = 1800,
               on_line=None) -> subprocess.CompletedProcess:
    """``code`` in a child Python process (the repository importable, stdout and stderr as one stream),
    each output line handed to ``on_line`` as it comes. A Spark Connect server the child starts runs its Python
    workers with ``PYSPARK_PYTHON``, so that is this interpreter too."""
    env = {**os.environ, "PYSPARK_PYTHON": PYTHON,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           **env}
    process = subprocess.Popen([PYTHON, "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    watchdog = threading.Timer(timeout_s, process.kill)  # a child that hangs without printing still ends
    watchdog.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)
    finally:
        watchdog.cancel()
    process.wait()
    output = "".join(lines)
    return subprocess.CompletedProcess(code, process.returncode, output, "")


def local_or_s3_location(request, tmp_path, monkeypatch, bucket: str, folder: str) -> str:
    """For a test parametrized ``local`` / ``s3a``: ``tmp_path/folder``, or a fresh prefix in ``bucket`` of the
    module's ``s3`` fixture (an :class:`S3Server`) with its endpoint and keys in the environment."""
    if request.param == "local":
        return str(tmp_path / folder)
    server = request.getfixturevalue("s3")
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    return f"s3a://{bucket}/{tmp_path.name}"
