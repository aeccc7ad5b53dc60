"""Formatting the local Kafka node's storage."""

from __future__ import annotations

import subprocess
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
