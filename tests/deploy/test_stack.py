"""Formatting the local Kafka node's storage and compiling the job's Java code."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from deploy import stack
from fraudcore.settings import REPO_ROOT


@pytest.mark.integration
def test_format_accepts_cluster_id_with_dash(tmp_path: Path) -> None:
    pom = REPO_ROOT / "deploy" / "local" / "kafka-pom.xml"
    jars = stack.resolve_jars(pom, REPO_ROOT / ".state" / "jars" / "kafka")
    data_dir = tmp_path / "data"
    config = tmp_path / "server.properties"
    config.write_text(stack._kafka_properties("127.0.0.1", 9, data_dir))
    # Random ids start with "-" one time in 64; "-t ID" took such an id for an
    # option and the format failed.
    cluster_id = "-HTv8m9qShStYl1qtZSPmA"
    java = ["java", "-cp", ":".join(str(jar) for jar in jars)]

    formatted = subprocess.run(
        java + stack.kafka_format_arguments(cluster_id, config),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert formatted.returncode == 0, formatted.stderr
    assert f"cluster.id={cluster_id}" in (data_dir / "meta.properties").read_text()


def write_source(folder: Path, name: str, body: str, mtime: float) -> None:
    source = folder / "org" / "example" / f"{name}.java"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(f"package org.example;\npublic class {name} {{ {body} }}\n")
    os.utime(source, (mtime, mtime))


def jar_classes(jar: Path) -> set[str]:
    with zipfile.ZipFile(jar) as archive:
        return {name for name in archive.namelist() if name.endswith(".class")}


@pytest.fixture
def function_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Return a source folder of one old class, used in place of streaming/java."""
    sources = tmp_path / "java"
    monkeypatch.setattr(stack, "FUNCTION_SOURCES", sources)
    write_source(sources, "First", "", mtime=1_000_000_000)
    return sources


def test_function_jar_rebuilt_for_older_sources(
    tmp_path: Path, function_sources: Path
) -> None:
    target = tmp_path / "jars"
    jar = stack.function_jar(target)
    built_at = jar.stat().st_mtime_ns

    assert stack.function_jar(target).stat().st_mtime_ns == built_at

    # Another checkout: an added class whose file is older than the jar.
    write_source(function_sources, "Second", "", mtime=1_000_000_000)
    rebuilt = stack.function_jar(target)

    assert jar_classes(rebuilt) == {
        "org/example/First.class",
        "org/example/Second.class",
    }


def test_function_jar_without_digest_uses_mtimes(
    tmp_path: Path, function_sources: Path
) -> None:
    target = tmp_path / "jars"
    jar = stack.function_jar(target)
    # The container image builds the jar after the sources, with no digest.
    (target / stack.FUNCTION_JAR_DIGEST).unlink()
    built_at = jar.stat().st_mtime_ns

    assert stack.function_jar(target).stat().st_mtime_ns == built_at

    write_source(function_sources, "First", "int x;", mtime=jar.stat().st_mtime + 60)

    assert stack.function_jar(target).stat().st_mtime_ns != built_at
