"""Offline checks of the deployment files: ``make check-deploy``.

Runs without a Docker engine or a cluster:

1. Every YAML and JSON file of the deployment parses.
2. ``docker-compose.yml`` is valid against the compose-spec JSON schema of
   ``github.com/compose-spec/compose-go/v2``.
3. The manifests of ``k8s/`` (rendered by ``kubectl kustomize``, plus the files
   kept out of the kustomization) are valid against the OpenAPI definitions of
   ``k8s.io/kubernetes``, made strict so that an unknown field is an error.
4. ``promtool`` checks the Prometheus rules and configuration, and runs the
   rules' unit tests in ``tests/deploy/fraud-slo.rules.test.yml``. Without
   promtool (``make promtool`` builds it) this step is reported as skipped.
5. BuildKit's Dockerfile parser and its parse-time lint rules check
   ``deploy/docker/Dockerfile``, through the small Go program of
   ``deploy/check/dockerfile/``. Without Go this step is reported as skipped.

The two schemas come from the Go module proxy as module zips, once, into
``.cache/deploy-check/`` (git-ignored), and are checked against the SHA-256
digests below. Later runs need no network. The metric names of the dashboard
and the rules are checked by ``tests/deploy/test_monitoring_metrics.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from fraudcore.settings import REPO_ROOT

CACHE_DIR = REPO_ROOT / ".cache" / "deploy-check"
GO_PROXY = os.environ.get("GOPROXY", "https://proxy.golang.org").split(",")[0]
DOWNLOAD_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class ModuleFile:
    """A file inside a Go module zip, pinned by its SHA-256 digest."""

    module: str
    version: str
    path: str
    sha256: str

    @property
    def cached(self) -> Path:
        return CACHE_DIR / f"{self.module.replace('/', '_')}@{self.version}" / self.path


COMPOSE_SCHEMA = ModuleFile(
    "github.com/compose-spec/compose-go/v2",
    "v2.17.0",
    "schema/compose-spec.json",
    "49eb9a1e1de41315949f302f8e6221bb42acd6038977f7c0974e38596ec4cdf6",
)
# The minor version of the kubectl (1.32) that renders the kustomization.
KUBERNETES_OPENAPI = ModuleFile(
    "k8s.io/kubernetes",
    "v1.32.4",
    "api/openapi-spec/swagger.json",
    "2335b4e7f79df85b20066164b14d8f02dd077dee7cd8c7b7fb425009c9837e85",
)

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
K8S_DIR = REPO_ROOT / "k8s"
# Manifests outside kustomization.yaml, validated on their own.
K8S_STANDALONE = [K8S_DIR / "secret.example.yaml", K8S_DIR / "jobs" / "train-job.yaml"]
RULES_FILE = K8S_DIR / "monitoring" / "fraud-slo.rules.yml"
RULES_TESTS = REPO_ROOT / "tests" / "deploy" / "fraud-slo.rules.test.yml"
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "monitoring" / "prometheus.yml"
PROMTOOL_CACHE = REPO_ROOT / ".cache" / "bin" / "promtool"
DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERFILE_CHECKER = REPO_ROOT / "deploy" / "check" / "dockerfile"
DOCKERFILE_CHECKER_BINARY = REPO_ROOT / ".cache" / "bin" / "dockerfile-check"


class CheckFailed(Exception):
    """A deployment file is invalid, or a check could not run."""


# --- schemas from the Go module proxy ----------------------------------------


def module_file(pinned: ModuleFile) -> Path:
    """Return the cached copy of ``pinned``, downloading its module zip if needed.

    The module's LICENSE is stored beside it.

    Raises:
        CheckFailed: if the download fails or the digest differs.
    """
    if not pinned.cached.is_file():
        _download(pinned)
    digest = hashlib.sha256(pinned.cached.read_bytes()).hexdigest()
    if digest != pinned.sha256:
        raise CheckFailed(
            f"{pinned.cached} has SHA-256 {digest}, expected {pinned.sha256}; "
            "delete it to download it again, or update the digest in "
            "deploy/check_deploy.py after reviewing the new schema"
        )
    return pinned.cached


def _download(pinned: ModuleFile) -> None:
    url = f"{GO_PROXY}/{_escape(pinned.module)}/@v/{pinned.version}.zip"
    print(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as reply:
            archive = zipfile.ZipFile(io.BytesIO(reply.read()))
    except OSError as exc:
        raise CheckFailed(f"downloading {url} failed: {exc}") from exc
    prefix = f"{pinned.module}@{pinned.version}/"
    pinned.cached.parent.mkdir(parents=True, exist_ok=True)
    pinned.cached.write_bytes(archive.read(prefix + pinned.path))
    root = pinned.cached.parents[len(Path(pinned.path).parts) - 1]
    (root / "LICENSE").write_bytes(archive.read(prefix + "LICENSE"))


def _escape(module: str) -> str:
    # The proxy protocol writes each capital letter as "!" and its lower case.
    return "".join(f"!{c.lower()}" if c.isupper() else c for c in module)


# --- 1. parsing --------------------------------------------------------------


def deployment_files() -> list[Path]:
    """Return every YAML and JSON file of the deployment."""
    roots = [REPO_ROOT / "deploy" / "monitoring", K8S_DIR]
    found = [COMPOSE_FILE]
    for root in roots:
        found += sorted(
            path
            for path in root.rglob("*")
            if path.suffix in {".yml", ".yaml", ".json"}
        )
    return found


def check_parse(paths: list[Path]) -> None:
    """Parse each file as YAML (every document) or JSON."""
    for path in paths:
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            else:
                list(yaml.safe_load_all(path.read_text()))
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise CheckFailed(
                f"{path.relative_to(REPO_ROOT)} does not parse: {exc}"
            ) from exc
    print(f"ok: {len(paths)} YAML and JSON files parse")


# --- 2. compose --------------------------------------------------------------


def check_compose() -> None:
    """Validate docker-compose.yml against the compose-spec schema."""
    schema = json.loads(module_file(COMPOSE_SCHEMA).read_text())
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = _messages(validator.iter_errors(document))
    if errors:
        raise CheckFailed("docker-compose.yml is invalid:\n" + "\n".join(errors))
    print(
        f"ok: docker-compose.yml is valid against {COMPOSE_SCHEMA.path} of "
        f"{COMPOSE_SCHEMA.module}@{COMPOSE_SCHEMA.version}"
    )


def _messages(errors: Iterator[jsonschema.ValidationError]) -> list[str]:
    return [
        f"  {'/'.join(str(part) for part in error.absolute_path) or '(root)'}: "
        f"{error.message}"
        for error in sorted(errors, key=lambda error: list(error.absolute_path))
    ]


# --- 3. Kubernetes -----------------------------------------------------------


def strict_definitions(swagger: dict[str, Any]) -> dict[str, Any]:
    """Return the OpenAPI definitions, made as strict as the API server.

    An object with listed properties gets ``additionalProperties: false``, so
    a misspelled field fails. IntOrString and Quantity also accept numbers,
    as the API server does.
    """
    definitions = swagger["definitions"]
    for definition in definitions.values():
        if "properties" in definition and "additionalProperties" not in definition:
            definition["additionalProperties"] = False
    definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {
        "type": ["string", "integer"]
    }
    definitions["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {
        "type": ["string", "number"]
    }
    return definitions


def kinds(definitions: dict[str, Any]) -> dict[tuple[str, str], str]:
    """Map (apiVersion, kind) to the name of its definition."""
    found = {}
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            group, version = gvk["group"], gvk["version"]
            api_version = f"{group}/{version}" if group else version
            found[(api_version, gvk["kind"])] = name
    return found


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """Return the rendered kustomization and the standalone manifests."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise CheckFailed("kubectl is not installed; it renders k8s/kustomization.yaml")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True
    )
    if rendered.returncode != 0:
        raise CheckFailed(f"kubectl kustomize k8s/ failed: {rendered.stderr}")
    documents = [
        ("kubectl kustomize k8s/", doc) for doc in yaml.safe_load_all(rendered.stdout)
    ]
    for path in K8S_STANDALONE:
        source = str(path.relative_to(REPO_ROOT))
        documents += [(source, doc) for doc in yaml.safe_load_all(path.read_text())]
    return [(source, doc) for source, doc in documents if doc]


def check_k8s() -> None:
    """Validate every manifest against the strict Kubernetes definitions."""
    swagger = json.loads(module_file(KUBERNETES_OPENAPI).read_text())
    definitions = strict_definitions(swagger)
    by_kind = kinds(definitions)
    errors = []
    documents = k8s_documents()
    for source, document in documents:
        key = (document.get("apiVersion"), document.get("kind"))
        name = f"{key[1]} {document.get('metadata', {}).get('name')}"
        if key not in by_kind:
            errors.append(f"{source}: {name}: no schema for {key[0]} {key[1]}")
            continue
        schema = {"$ref": f"#/definitions/{by_kind[key]}", "definitions": definitions}
        validator = jsonschema.Draft4Validator(schema)
        errors += [
            f"{source}: {name}:{line}"
            for line in _messages(validator.iter_errors(document))
        ]
    if errors:
        raise CheckFailed("Kubernetes manifests are invalid:\n" + "\n".join(errors))
    print(
        f"ok: {len(documents)} Kubernetes objects are valid against "
        f"{KUBERNETES_OPENAPI.path} of {KUBERNETES_OPENAPI.module}@"
        f"{KUBERNETES_OPENAPI.version} (unknown fields rejected)"
    )


# --- 4. promtool -------------------------------------------------------------


def check_promtool() -> bool:
    """Check the rules and the configuration with promtool, if it is installed.

    Also runs the rules' unit tests, which feed them series and compare the
    alerts that fire.

    Returns:
        Whether promtool was found and ran.
    """
    promtool = shutil.which("promtool") or (
        str(PROMTOOL_CACHE) if PROMTOOL_CACHE.is_file() else None
    )
    if promtool is None:
        print("skipped: promtool is not installed (make promtool builds it)")
        return False
    for command in (
        [promtool, "check", "rules", str(RULES_FILE)],
        [promtool, "test", "rules", str(RULES_TESTS)],
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS_CONFIG)],
    ):
        result = subprocess.run(command, capture_output=True, text=True)
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            raise CheckFailed(f"{' '.join(command[1:])} failed:\n{output}")
        print(
            f"ok: promtool {' '.join(command[1:3])}: {output.splitlines()[-1].strip()}"
        )
    return True


# --- 5. Dockerfile -----------------------------------------------------------


def check_dockerfile() -> bool:
    """Parse the Dockerfile with BuildKit's parser and lint rules, if Go is installed.

    Returns:
        Whether Go was found and the check ran.
    """
    go = shutil.which("go")
    if go is None:
        print("skipped: Go is not installed; it builds deploy/check/dockerfile")
        return False
    # Go's build cache makes this quick after the first build.
    build = subprocess.run(
        [go, "build", "-o", str(DOCKERFILE_CHECKER_BINARY), "."],
        cwd=DOCKERFILE_CHECKER,
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        raise CheckFailed(f"building deploy/check/dockerfile failed:\n{build.stderr}")
    result = subprocess.run(
        [str(DOCKERFILE_CHECKER_BINARY), str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise CheckFailed(f"deploy/docker/Dockerfile is invalid:\n{output}")
    print(f"ok: {output.replace(str(REPO_ROOT) + '/', '')}")
    return True


def main(argv: list[str] | None = None) -> int:
    """Run every check and return 0 when all that ran passed."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.check_deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    try:
        check_parse(deployment_files())
        check_compose()
        check_k8s()
        check_promtool()
        check_dockerfile()
    except CheckFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
