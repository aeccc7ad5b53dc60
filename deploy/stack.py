"""Local stack: a Kafka broker, Redis and PostgreSQL on 127.0.0.1, started natively.

``python -m deploy.stack up`` starts each server that is not already reachable and
waits until it responds. ``down`` stops only the servers this module started, by
the PIDs it recorded. State, logs and PID files live under ``FRAUD_STATE_DIR``
(``.state/`` by default). Setting ``FRAUD_KAFKA_BOOTSTRAP``, ``FRAUD_REDIS_URL`` or
``FRAUD_PG_DSN`` points at an existing server instead, and that server is then
never started nor stopped here.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyflink

from fraudcore.settings import REPO_ROOT, PlatformSettings

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 90
STOP_TIMEOUT_SECONDS = 30
TOPIC_PARTITIONS = 2
TOPIC_RETENTION_BYTES = 4 * 1024**3  # per partition


class StackError(RuntimeError):
    """A server of the local stack could not be started, reached or stopped."""


@dataclass(frozen=True)
class Paths:
    """Folders of the local stack under the state directory."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def jars(self) -> Path:
        return self.root / "jars"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` (or a URL with both) into its parts."""
    if "://" in address:
        parts = urlsplit(address)
        return parts.hostname or "127.0.0.1", parts.port or 0
    host, _, port = address.rpartition(":")
    return host, int(port)


def is_listening(host: str, port: int) -> bool:
    """Return whether a TCP connection to ``host:port`` succeeds within a second."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def resolve_jars(pom: Path, target: Path) -> list[Path]:
    """Copy the jars a POM depends on into ``target`` once, and return them.

    Raises:
        StackError: if Maven fails; its output is in the message.
    """
    marker = target / ".complete"
    if not marker.exists():
        log.info("resolving jars of %s from Maven Central into %s", pom.name, target)
        target.mkdir(parents=True, exist_ok=True)
        command = [
            "mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
            f"-DoutputDirectory={target}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"mvn failed for {pom}: {result.stdout}{result.stderr}")
        marker.write_text(pom.read_text())
    return sorted(target.glob("*.jar"))


def flink_jars(settings: PlatformSettings) -> list[Path]:
    """Return the jars of the PyFlink jobs: the connectors and the job's functions.

    The connectors are resolved and the functions compiled when missing.
    """
    paths = Paths(settings.state_dir)
    pom = REPO_ROOT / "deploy" / "local" / "flink-pom.xml"
    connectors = resolve_jars(pom, paths.jars / "flink")
    return [*connectors, function_jar(paths.jars / "functions")]


FUNCTION_SOURCES = REPO_ROOT / "streaming" / "java" / "src" / "main" / "java"
FUNCTION_JAR = "fraud-functions.jar"
# Beside the jar: the digest of the sources it was built from.
FUNCTION_JAR_DIGEST = f"{FUNCTION_JAR}.sha256"


def function_jar(target: Path) -> Path:
    """Return the jar of the feature job's Java functions, compiled when stale.

    The sources in ``streaming/java`` are compiled with ``javac`` against the
    Flink jars of the installed PyFlink, so they match the Flink that runs them.
    The jar is stale when the digest of the sources' paths and contents differs
    from the one stored beside it, so a checkout of other sources with older
    modification times (another branch, say) rebuilds it too. A jar without a
    stored digest is stale when a source is newer than it.

    Raises:
        StackError: if ``javac`` or ``jar`` fails; its output is in the message.
    """
    sources = sorted(FUNCTION_SOURCES.rglob("*.java"))
    jar = target / FUNCTION_JAR
    digest_path = target / FUNCTION_JAR_DIGEST
    digest = _sources_digest(sources)
    if _jar_is_fresh(jar, digest_path, digest, sources):
        return jar
    log.info("compiling the feature job's functions into %s", jar)
    target.mkdir(parents=True, exist_ok=True)
    flink_lib = Path(pyflink.__file__).resolve().parent / "lib"
    # Built aside and renamed, so that a job starting meanwhile never loads a
    # half-written jar.
    with tempfile.TemporaryDirectory(dir=target) as build:
        classes, built = Path(build) / "classes", Path(build) / FUNCTION_JAR
        for command in (
            ["javac", "--release", "17", "-cp", f"{flink_lib}/*", "-d", str(classes)]
            + [str(source) for source in sources],
            ["jar", "--create", "--file", str(built), "-C", str(classes), "."],
        ):
            result = subprocess.run(
                command, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise StackError(
                    f"{command[0]} failed for {FUNCTION_SOURCES}: "
                    f"{result.stdout}{result.stderr}"
                )
        os.replace(built, jar)
    digest_path.write_text(digest)
    return jar


def _jar_is_fresh(
    jar: Path, digest_path: Path, digest: str, sources: list[Path]
) -> bool:
    if not jar.exists():
        return False
    if digest_path.exists():
        return digest_path.read_text() == digest
    # The container image builds the jar without Python, so it has no digest.
    # It is built after the sources are copied, so a newer jar is fresh.
    return jar.stat().st_mtime >= max(source.stat().st_mtime for source in sources)


def _sources_digest(sources: list[Path]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        digest.update(str(source.relative_to(FUNCTION_SOURCES)).encode() + b"\0")
        digest.update(source.read_bytes() + b"\0")
    return digest.hexdigest()


# Servers this process started, kept so that their exit can be seen (and
# reaped) by poll() and so that no Popen is collected while its child runs.
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    name: str,
    command: list[str],
    paths: Paths,
    user: str | None = None,
    environment: dict[str, str] | None = None,
) -> int:
    """Start ``command`` in its own session, logging to the server's log file.

    Returns:
        The PID, also written to the server's PID file.
    """
    with paths.log_file(name).open("ab") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=environment,
            **_identity(user),
        )
    _children[process.pid] = process
    paths.pid_file(name).write_text(f"{process.pid}\n")
    log.info("started %s (pid %d), log %s", name, process.pid, paths.log_file(name))
    return process.pid


def _identity(user: str | None) -> dict[str, Any]:
    """Arguments of subprocess that run a child as ``user`` with only its own group.

    Without them the child keeps root's groups, and the group bits of a
    root-owned directory then deny it what the bits for others would allow.
    """
    if user is None:
        return {}
    return {"user": user, "group": user, "extra_groups": []}


def wait_until(name: str, check, paths: Paths, pid: int | None) -> None:
    """Wait until ``check()`` is true, failing early when process ``pid`` exits.

    Raises:
        StackError: if the process exits or the check stays false for
            ``READY_TIMEOUT_SECONDS``.
    """
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            raise StackError(
                f"{name} exited during start-up; see {paths.log_file(name)}:\n"
                + log_tail(paths.log_file(name))
            )
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            log.debug("%s not ready yet: %s", name, exc)
        time.sleep(0.5)
    raise StackError(
        f"{name} did not become ready within {READY_TIMEOUT_SECONDS} s; "
        f"see {paths.log_file(name)}:\n" + log_tail(paths.log_file(name))
    )


def log_tail(path: Path, lines: int = 15) -> str:
    """Return the last lines of a log file, or a note that it was never written."""
    if not path.exists():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def alive(pid: int) -> bool:
    """Return whether process ``pid`` runs (a child this process started, or any)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- Kafka ------------------------------------------------------------------


def _kafka_properties(host: str, port: int, data_dir: Path) -> str:
    controller = f"{host}:{port + 1}"
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={controller}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{controller}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data_dir}",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            f"num.partitions={TOPIC_PARTITIONS}",
            "auto.create.topics.enable=false",
            "",
        ]
    )


def start_kafka(settings: PlatformSettings, paths: Paths) -> None:
    """Start a single-node KRaft broker unless one responds at the bootstrap address."""
    host, port = host_port(settings.kafka_bootstrap)
    if is_listening(host, port):
        log.info("kafka already reachable at %s", settings.kafka_bootstrap)
    elif "FRAUD_KAFKA_BOOTSTRAP" in os.environ:
        raise StackError(f"kafka is not reachable at {settings.kafka_bootstrap}")
    else:
        _launch_kafka(host, port, paths)
    create_topics(settings)


def _launch_kafka(host: str, port: int, paths: Paths) -> None:
    pom = REPO_ROOT / "deploy" / "local" / "kafka-pom.xml"
    jars = resolve_jars(pom, paths.jars / "kafka")
    classpath = ":".join(str(jar) for jar in jars)
    home = paths.root / "kafka"
    data_dir = home / "data"
    config = home / "server.properties"
    home.mkdir(parents=True, exist_ok=True)
    config.write_text(_kafka_properties(host, port, data_dir))
    java = ["java", "-Xms256m", "-Xmx768m", "-cp", classpath]
    if not (data_dir / "meta.properties").exists():
        storage = kafka_format_arguments(_kafka_cluster_id(), config)
        formatted = subprocess.run(java + storage, capture_output=True, text=True)
        if formatted.returncode != 0:
            raise RuntimeError(
                f"formatting the Kafka storage in {data_dir} failed with exit "
                f"code {formatted.returncode}: {formatted.stderr.strip()[-500:]}"
            )
    log4j = REPO_ROOT / "deploy" / "local" / "kafka-log4j2.yaml"
    command = java + [f"-Dlog4j2.configurationFile={log4j}", "kafka.Kafka", str(config)]
    pid = spawn("kafka", command, paths)
    # Probe the port first: librdkafka logs every refused connection to stderr.
    ready = lambda: is_listening(host, port) and _kafka_answers(f"{host}:{port}")  # noqa: E731
    wait_until("kafka", ready, paths, pid)


def kafka_format_arguments(cluster_id: str, config: Path) -> list[str]:
    """Return the StorageTool arguments that format a standalone KRaft node."""
    # A cluster id may start with "-", which "-t ID" would read as an option.
    return [
        "kafka.tools.StorageTool",
        "format",
        "--standalone",
        f"--cluster-id={cluster_id}",
        "-c",
        str(config),
    ]


def _kafka_cluster_id() -> str:
    # A KRaft cluster id is a base64 (URL-safe, unpadded) 16-byte UUID.
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _kafka_answers(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=2)
    return bool(metadata.brokers)


def create_topics(settings: PlatformSettings) -> None:
    """Create the platform's topics that do not exist yet."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    names = settings.topics()
    # Replayed events keep their original (years old) timestamps, and time-based
    # retention would delete them as soon as they land, so these topics are
    # bounded by size instead.
    config = {"retention.ms": "-1", "retention.bytes": str(TOPIC_RETENTION_BYTES)}
    missing = [
        NewTopic(name, TOPIC_PARTITIONS, 1, config=config)
        for name in names
        if name not in existing
    ]
    for name, future in admin.create_topics(missing).items() if missing else []:
        future.result(timeout=30)
        log.info("created topic %s", name)


def topic_records(settings: PlatformSettings, topic: str) -> int:
    """Return how many records a topic holds, from its partitions' offsets."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "count-only"}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            total += high - low
        return total
    finally:
        consumer.close()


def delete_topics(settings: PlatformSettings, names: list[str]) -> None:
    """Delete the topics of ``names`` that exist and wait until the broker drops them.

    Topic deletion is asynchronous on the broker, and creating a topic of the
    same name too early fails, so this waits up to a minute for them to go.
    """
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = [name for name in names if name in admin.list_topics(timeout=10).topics]
    for future in (admin.delete_topics(existing) if existing else {}).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not set(existing) & set(admin.list_topics(timeout=10).topics):
            return
        time.sleep(0.5)


# --- Redis ------------------------------------------------------------------


def start_redis(settings: PlatformSettings, paths: Paths) -> None:
    """Start Debian's redis-server unless one responds at the Redis URL."""
    host, port = host_port(settings.redis_url)
    if is_listening(host, port):
        log.info("redis already reachable at %s", settings.redis_url)
        return
    if "FRAUD_REDIS_URL" in os.environ:
        raise StackError(f"redis is not reachable at {settings.redis_url}")
    server = shutil.which("redis-server")
    if server is None:
        raise StackError("redis-server is not installed; run `make setup` first")
    data_dir = paths.root / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    # Persistence is off: PostgreSQL keeps the durable copy of the online store.
    command = [server, "--bind", host, "--port", str(port), "--dir", str(data_dir)]
    command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    pid = spawn("redis", command, paths)
    wait_until("redis", lambda: _redis_answers(settings.redis_url), paths, pid)


def _redis_answers(url: str) -> bool:
    import redis

    return bool(redis.Redis.from_url(url, socket_timeout=1).ping())


def delete_redis_keys(settings: PlatformSettings) -> None:
    """Delete every Redis key that starts with the settings' prefix."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}:*", count=5000))
    for start in range(0, len(keys), 5000):
        client.delete(*keys[start : start + 5000])


# --- PostgreSQL --------------------------------------------------------------


def _pg_binary(name: str) -> str:
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise StackError(f"PostgreSQL's {name} is not installed; run `make setup`")
    return str(candidates[-1])


def start_postgres(settings: PlatformSettings, paths: Paths) -> None:
    """Start a PostgreSQL cluster owned by the postgres user, unless one responds."""
    dsn = urlsplit(settings.pg_dsn)
    host, port = dsn.hostname or "127.0.0.1", dsn.port or 5432
    if is_listening(host, port):
        log.info("postgresql already reachable at %s:%d", host, port)
        return
    if "FRAUD_PG_DSN" in os.environ:
        raise StackError(f"postgresql is not reachable at {host}:{port}")
    data_dir = paths.root / "postgres"
    user = "postgres" if os.geteuid() == 0 else None
    password_file = paths.root / "postgres-superuser-password"
    if not (data_dir / "PG_VERSION").exists():
        _init_postgres(data_dir, password_file, user)
    command = [_pg_binary("postgres"), "-D", str(data_dir), "-p", str(port)]
    command += ["-c", f"listen_addresses={host}", "-c", "unix_socket_directories="]
    pid = spawn("postgres", command, paths, user=user)
    superuser = f"postgresql://postgres:{password_file.read_text().strip()}@{host}:{port}/postgres"
    wait_until("postgres", lambda: _pg_answers(superuser), paths, pid)
    _ensure_database(superuser, dsn.username or "fraud", dsn.password or "", dsn.path)


def _init_postgres(data_dir: Path, password_file: Path, user: str | None) -> None:
    log.info("initialising a PostgreSQL cluster in %s", data_dir)
    data_dir.mkdir(parents=True)
    password_file.write_text(secrets.token_urlsafe(18) + "\n")
    password_file.chmod(0o600)
    if user is not None:
        # initdb refuses to run as root, so the cluster belongs to the postgres user.
        shutil.chown(data_dir, user=user)
        shutil.chown(password_file, user=user)
        _let_user_reach(data_dir, user)
    command = [_pg_binary("initdb"), "-D", str(data_dir), "-U", "postgres"]
    command += ["--auth=scram-sha-256", f"--pwfile={password_file}", "-E", "UTF8"]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=data_dir, **_identity(user)
    )
    if result.returncode != 0:
        raise StackError(f"initdb failed: {result.stdout}{result.stderr}")


def _let_user_reach(path: Path, user: str) -> None:
    """Grant search permission to others on the ancestors of ``path`` lacking it.

    A checkout inside a private folder (``mktemp -d`` makes them 0700) hides the
    cluster's data directory from the postgres user. Search permission alone
    lets it reach the directory without listing anything on the way.
    """
    for ancestor in reversed(path.resolve().parents):
        probe = subprocess.run(["test", "-x", str(ancestor)], **_identity(user))
        if probe.returncode != 0:
            log.warning(
                "granting others search permission on %s so that the %s user "
                "can reach %s",
                ancestor,
                user,
                path,
            )
            ancestor.chmod(ancestor.stat().st_mode | stat.S_IXOTH)


@contextmanager
def created_database(settings: PlatformSettings, name: str) -> Iterator[str]:
    """Create the database ``name`` beside the settings' one, yield its DSN, drop it.

    Tests and benchmarks use one each, so that they leave the platform's own
    tables alone. The drop ends the connections still open to it.
    """
    import psycopg
    from psycopg import sql

    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield settings.pg_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


def _pg_answers(dsn: str) -> bool:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=2):
        return True


def _ensure_database(superuser_dsn: str, role: str, password: str, path: str) -> None:
    import psycopg
    from psycopg import sql

    database = path.lstrip("/") or role
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", [role]
        ).fetchone():
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
        if not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [database]
        ).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
            )


# --- up / down ---------------------------------------------------------------


SERVERS = ("kafka", "postgres", "redis")


def up(settings: PlatformSettings) -> list[str]:
    """Start every server of the stack that is not reachable yet.

    Returns:
        The names of the servers this call started.
    """
    paths = Paths(settings.state_dir)
    paths.run.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    before = {name for name in SERVERS if paths.pid_file(name).exists()}
    start_redis(settings, paths)
    start_postgres(settings, paths)
    start_kafka(settings, paths)
    log.info("stack is up")
    return [n for n in SERVERS if paths.pid_file(n).exists() and n not in before]


def down(settings: PlatformSettings, names: list[str] | None = None) -> None:
    """Stop the servers this module started (or those of ``names``), by PID.

    A Flink cluster of :mod:`deploy.flink_cluster` is stopped first, because its
    jobs use the other servers.
    """
    paths = Paths(settings.state_dir)
    everything = ("flink-taskmanager", "flink-jobmanager", *SERVERS)
    for name in everything if names is None else names:
        pid_file = paths.pid_file(name)
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if alive(pid) and _command_of(pid).find(_program_of(name)) >= 0:
            # SIGINT is PostgreSQL's fast shutdown; the others treat it like SIGTERM.
            os.kill(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
            _wait_for_exit(name, pid)
        pid_file.unlink()


# A part of each server's command line, so that a PID reused by another program
# is never signalled.
PROGRAMS = {
    "kafka": "kafka.Kafka",
    "postgres": "postgres",
    "redis": "redis-server",
    "flink-jobmanager": "StandaloneSessionClusterEntrypoint",
    "flink-taskmanager": "TaskManagerRunner",
}


def _program_of(name: str) -> str:
    return PROGRAMS[name]


def _command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_for_exit(name: str, pid: int) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not alive(pid):
            log.info("stopped %s (pid %d)", name, pid)
            return
        time.sleep(0.2)
    log.warning("%s (pid %d) ignored the stop signal; killing it", name, pid)
    os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    """Run ``up`` or ``down`` from the command line."""
    parser = argparse.ArgumentParser(prog="python -m deploy.stack", description=__doc__)
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = PlatformSettings()
    try:
        up(settings) if args.action == "up" else down(settings)
    except StackError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
