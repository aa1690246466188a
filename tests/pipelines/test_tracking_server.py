"""A shared tracking server: `mlflow server` on a PostgreSQL backend store with --serve-artifacts.

The test starts a throwaway PostgreSQL cluster on 127.0.0.1 (Debian's ``postgresql`` package; as root it runs
the server as the ``postgres`` user, which PostgreSQL requires), an ``mlflow server`` on it, then trains a
tiny run over HTTP, exports it, registers and promotes it, and reads the alias back over HTTP. It skips, with
the reason, where the PostgreSQL binaries or the ``psycopg2`` driver are missing (CI installs both).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from pipelines import export, promote, train

START_TIMEOUT_S = 120
FAST = ["--max-steps", "2", "--rank", "4", "--lora-alpha", "8", "--batch-size", "8", "--max-length", "16",
        "--precision", "fp32", "--checkpoint-every", "0"]
NAME = "flipkd-pg"


def postgres_bin() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # Debian links only some tools onto PATH
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(versions[-1]).parent if versions else None


def _skip_reason() -> str | None:
    if postgres_bin() is None:
        return "PostgreSQL is not installed (no initdb; Debian: apt-get install -y postgresql; CI installs it)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "the psycopg2 driver is not installed (pip install psycopg2-binary, in requirements-dev.txt)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_db_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _wait_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer {url} in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def postgres_uri():
    """A throwaway cluster on 127.0.0.1:<free port> with an empty ``mlflow`` database; removed afterwards."""
    bin_dir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="flipkd-pg-"))  # not under pytest's tmp: the postgres user must reach it
    data, port = root / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    started = False
    try:
        subprocess.run(_as_db_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                    "-E", "UTF8"]), check=True, capture_output=True, timeout=120)
        subprocess.run(_as_db_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w",
                                    "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start"]),
                       check=True, capture_output=True, timeout=120)
        started = True
        subprocess.run(_as_db_user([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                    "mlflow"]), check=True, capture_output=True, timeout=60)
        # explicit driver: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        if started:
            subprocess.run(_as_db_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tracking_server(postgres_uri, tmp_path):
    """``mlflow server`` on the PostgreSQL store, proxying artifacts (--serve-artifacts) to a local folder."""
    port, log = free_port(), tmp_path / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres_uri, "--serve-artifacts",
           "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started (its own session)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def test_pipeline_logs_registers_and_promotes_over_http(tracking_server, tiny_model_args, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("FLIPKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(tracking_server)
    client = MlflowClient(tracking_server)
    try:
        result = CliRunner().invoke(train.cli, tiny_model_args + FAST)
        assert result.exit_code == 0, result.output
        experiment = client.get_experiment_by_name("t")
        trained = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
        assert trained.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
        assert "loss/total" in trained.data.metrics
        assert {a.path for a in client.list_artifacts(trained.info.run_id)} >= {"student"}

        result = CliRunner().invoke(export.cli, ["--no-progress", "--experiment", "t", "--threads", "1",
                                                 "--model", trained.info.run_id, "--serve", "fp32"])
        assert result.exit_code == 0, result.output
        exported = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
        assert exported.info.run_id != trained.info.run_id

        result = CliRunner().invoke(promote.cli, ["--run-id", exported.info.run_id, "--name", NAME])
        assert result.exit_code == 0, result.output
        champion = MlflowClient(tracking_server).get_model_version_by_alias(NAME, "champion")
        assert champion.run_id == exported.info.run_id
    finally:
        while mlflow.active_run():
            mlflow.end_run()
