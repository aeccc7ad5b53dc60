"""A standalone Flink session cluster on 127.0.0.1, for submitting the feature job.

The feature job normally runs on an embedded cluster inside its own process.
This module starts a job manager and a task manager from the scripts and jars
of the PyFlink package instead, so ``flink run`` submits the same job the way
it would go to a production cluster::

    python -m deploy.flink_cluster up
    python -m deploy.flink_cluster submit -- --bounded
    python -m deploy.flink_cluster down

Both processes bind 127.0.0.1 only. Their configuration, jars and logs live in
``<state dir>/flink``; the processes are stopped by PID, like the stack's
servers. The Python operators run in thread mode inside the task manager, so
the task manager gets this repository and the virtual environment on its
``PYTHONPATH``. A production cluster needs the same: the repository's packages
and their dependencies installed in the Python that runs the operators.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyflink
import yaml

from deploy import stack
from fraudcore.settings import REPO_ROOT, PlatformSettings

log = logging.getLogger(__name__)

PYFLINK_HOME = Path(pyflink.__file__).resolve().parent
JOB_MANAGER = "flink-jobmanager"
TASK_MANAGER = "flink-taskmanager"
DEFAULT_REST_PORT = 18081
DEFAULT_RPC_PORT = 16123
TASK_SLOTS = 4


@dataclass(frozen=True)
class FlinkCluster:
    """Addresses and folders of a standalone session cluster."""

    home: Path
    rest_port: int

    @property
    def conf_dir(self) -> Path:
        """Folder of the cluster's ``config.yaml`` and logging settings."""
        return self.home / "conf"

    @property
    def lib_dir(self) -> Path:
        """Folder of the jars on the cluster's class path."""
        return self.home / "lib"

    @property
    def rest_url(self) -> str:
        """Base URL of the job manager's REST API."""
        return f"http://127.0.0.1:{self.rest_port}"

    def environment(self) -> dict[str, str]:
        """Return the variables that point Flink's scripts at this cluster."""
        return {
            "FLINK_CONF_DIR": str(self.conf_dir),
            "FLINK_LIB_DIR": str(self.lib_dir),
            "FLINK_LOG_DIR": str(self.home / "log"),
            "FLINK_PID_DIR": str(self.home / "run"),
        }


def cluster_of(settings: PlatformSettings, rest_port: int) -> FlinkCluster:
    """Return the cluster whose files live under the state folder of ``settings``."""
    return FlinkCluster(settings.state_dir / "flink", rest_port)


def configuration(rest_port: int, rpc_port: int) -> dict[str, Any]:
    """Return the cluster's ``config.yaml``: PyFlink's defaults, bound to 127.0.0.1."""
    defaults = yaml.safe_load((PYFLINK_HOME / "conf" / "config.yaml").read_text())
    # The defaults keep the JVM options Flink needs on Java 17 (add-opens).
    return {
        "env": defaults["env"],
        "jobmanager": {
            "rpc": {"address": "127.0.0.1", "port": rpc_port},
            "bind-host": "127.0.0.1",
            "memory": {"process": {"size": "1200m"}},
        },
        "taskmanager": {
            "host": "127.0.0.1",
            "bind-host": "127.0.0.1",
            "numberOfTaskSlots": TASK_SLOTS,
            "memory": {"process": {"size": "3000m"}},
        },
        "rest": {
            "address": "127.0.0.1",
            "bind-address": "127.0.0.1",
            "port": rest_port,
        },
    }


def prepare(cluster: FlinkCluster, rpc_port: int) -> None:
    """Write the configuration and link the jars, including the Python runtime.

    The PyFlink package keeps ``flink-python`` in ``opt``, where a cluster does
    not load it, so the cluster's own ``lib`` folder links it beside the others.
    """
    folders = (
        cluster.conf_dir,
        cluster.lib_dir,
        cluster.home / "log",
        cluster.home / "run",
    )
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    config = configuration(cluster.rest_port, rpc_port)
    (cluster.conf_dir / "config.yaml").write_text(yaml.safe_dump(config))
    for source in (PYFLINK_HOME / "conf").glob("log*"):
        shutil.copy(source, cluster.conf_dir / source.name)
    jars = list((PYFLINK_HOME / "lib").glob("*.jar"))
    jars += (PYFLINK_HOME / "opt").glob("flink-python-*.jar")
    for old in cluster.lib_dir.glob("*.jar"):
        old.unlink()
    for jar in jars:
        (cluster.lib_dir / jar.name).symlink_to(jar)


def up(
    settings: PlatformSettings,
    rest_port: int = DEFAULT_REST_PORT,
    rpc_port: int = DEFAULT_RPC_PORT,
) -> FlinkCluster:
    """Start a job manager and a task manager, and wait until a slot is free.

    Raises:
        StackError: if a process exits during start-up or the cluster offers no
            slot within the stack's start-up timeout.
    """
    cluster = cluster_of(settings, rest_port)
    paths = stack.Paths(settings.state_dir)
    paths.run.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    if stack.is_listening("127.0.0.1", rest_port):
        raise stack.StackError(
            f"port {rest_port} on 127.0.0.1 is taken; stop what listens there or "
            "choose another --rest-port"
        )
    prepare(cluster, rpc_port)
    scripts = PYFLINK_HOME / "bin"
    environment = os.environ | cluster.environment()
    job_manager = stack.spawn(
        JOB_MANAGER,
        [str(scripts / "jobmanager.sh"), "start-foreground"],
        paths,
        environment=environment,
    )
    task_manager = stack.spawn(
        TASK_MANAGER,
        [str(scripts / "taskmanager.sh"), "start-foreground"],
        paths,
        environment=environment | {"PYTHONPATH": _operator_path()},
    )
    stack.wait_until(JOB_MANAGER, lambda: _free_slots(cluster) > 0, paths, job_manager)
    if not stack.alive(task_manager):
        raise stack.StackError(
            f"{TASK_MANAGER} exited during start-up; see {paths.log_file(TASK_MANAGER)}"
        )
    log.info("Flink cluster is up, REST API at %s", cluster.rest_url)
    return cluster


def down(settings: PlatformSettings) -> None:
    """Stop the task manager and the job manager that :func:`up` started."""
    stack.down(settings, [TASK_MANAGER, JOB_MANAGER])


def submit_command(cluster: FlinkCluster, job_arguments: list[str]) -> list[str]:
    """Return the ``flink run`` command that submits the feature job to ``cluster``."""
    return [
        str(PYFLINK_HOME / "bin" / "flink"),
        "run",
        "--jobmanager",
        f"127.0.0.1:{cluster.rest_port}",
        "--pyExecutable",
        sys.executable,
        "--pyClientExecutable",
        sys.executable,
        "--python",
        str(REPO_ROOT / "streaming" / "features_job.py"),
        *job_arguments,
    ]


def submit(
    cluster: FlinkCluster,
    job_arguments: list[str],
    environment: dict[str, str],
    timeout_seconds: float | None = None,
) -> int:
    """Submit the feature job and return the exit code of ``flink`` once it ends.

    Raises:
        subprocess.TimeoutExpired: if the client runs longer than
            ``timeout_seconds``.
    """
    command = submit_command(cluster, job_arguments)
    log.info("submitting: %s", " ".join(command))
    completed = subprocess.run(
        command,
        env=environment | cluster.environment(),
        cwd=REPO_ROOT,
        check=False,
        timeout=timeout_seconds,
    )
    return completed.returncode


def _operator_path() -> str:
    site_packages = sysconfig.get_paths()["purelib"]
    return os.pathsep.join([str(REPO_ROOT), site_packages])


def _free_slots(cluster: FlinkCluster) -> int:
    with urllib.request.urlopen(f"{cluster.rest_url}/overview", timeout=2) as response:
        return int(json.load(response)["slots-available"])


def main(argv: list[str] | None = None) -> int:
    """Run ``up``, ``down`` or ``submit`` from the command line."""
    parser = argparse.ArgumentParser(prog="python -m deploy.flink_cluster")
    parser.add_argument("action", choices=["up", "down", "submit"])
    parser.add_argument("--rest-port", type=int, default=DEFAULT_REST_PORT)
    parser.add_argument(
        "job_arguments",
        nargs="*",
        help="arguments of the feature job, after '--' (submit only)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = PlatformSettings()
    try:
        if args.action == "up":
            up(settings, args.rest_port)
        elif args.action == "down":
            down(settings)
        else:
            cluster = cluster_of(settings, args.rest_port)
            return submit(cluster, args.job_arguments, dict(os.environ))
    except stack.StackError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
