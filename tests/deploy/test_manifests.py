"""Rules the compose file, the Kubernetes manifests and the Dockerfile keep.

Schema validation (``make check-deploy``) cannot see these: published ports
bound to 127.0.0.1, dependencies that wait for a health check, files that the
mounts and COPY lines name, and resources and probes set on every pod.
"""

from __future__ import annotations

import re

import pytest
import yaml

from fraudcore.settings import REPO_ROOT

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
K8S_FILES = sorted((REPO_ROOT / "k8s").rglob("*.yaml"))


def k8s_objects() -> list[dict]:
    objects = []
    for path in K8S_FILES:
        if path.name == "kustomization.yaml":
            continue
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def pod_specs() -> list:
    """Return the pod templates of every workload, named by kind and name."""
    found = []
    for obj in k8s_objects():
        spec = obj.get("spec", {})
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" not in spec:
            continue
        name = obj["metadata"].get("name") or obj["metadata"]["generateName"]
        found.append(pytest.param(spec["template"]["spec"], id=f"{obj['kind']} {name}"))
    return found


def test_compose_ports_bound_to_loopback():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: write port {port!r} as a string"
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is not on 127.0.0.1"


def test_compose_dependencies_have_checks():
    for name, service in SERVICES.items():
        for target, condition in service.get("depends_on", {}).items():
            assert target in SERVICES, f"{name} depends on unknown {target}"
            expected_state = condition["condition"]
            if expected_state == "service_healthy":
                check = SERVICES[target].get("healthcheck", {})
                assert check.get("test"), (
                    f"{name} waits for {target}, which has no check"
                )
                assert not check.get("disable"), f"{target}'s check is disabled"
            elif expected_state == "service_completed_successfully":
                assert SERVICES[target].get("restart") == "no", target


def test_compose_services_have_checks():
    for name, service in SERVICES.items():
        check = service.get("healthcheck")
        assert check is not None, f"{name} has no healthcheck entry"
        assert check.get("test") or check.get("disable"), name


def test_compose_mounted_files_exist():
    for name, service in SERVICES.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), f"{name}: {source} is missing"


def test_compose_secrets_overridable():
    # Every password is a ${VAR:-default} so that an .env file replaces it.
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    for line in text.splitlines():
        if re.search(r"PASSWORD:|password", line) and not line.lstrip().startswith("#"):
            assert "${" in line, f"fixed password: {line.strip()}"


def test_dockerfile_copies_existing_paths():
    copies = re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _target = line.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), (
                f"COPY {source}: not in the repository"
            )


def test_dockerfile_runs_as_non_root():
    users = re.findall(r"^USER (\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert users
    assert not users[-1].startswith(("root", "0"))


@pytest.mark.parametrize("pod", pod_specs())
def test_pods_non_root_with_resources(pod):
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"]:
        resources = container.get("resources", {})
        assert resources.get("requests", {}).get("cpu"), container["name"]
        assert resources.get("requests", {}).get("memory"), container["name"]
        assert resources.get("limits", {}).get("memory"), container["name"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_scorer_probes_health_routes():
    deployment = next(
        obj
        for obj in k8s_objects()
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "fraud-scorer"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def known_settings() -> set[str]:
    from services.scorer.settings import ScorerSettings
    from streaming.features_job import StreamJobSettings

    return {
        f"FRAUD_{name.upper()}"
        for cls in (ScorerSettings, StreamJobSettings)
        for name in cls.model_fields
    }


def test_settings_names_are_known():
    # A misspelled FRAUD_ variable would be ignored by the settings classes.
    known = known_settings()
    named: dict[str, set[str]] = {}
    for obj in k8s_objects():
        if obj["kind"] in ("ConfigMap", "Secret"):
            data = obj.get("data") or obj.get("stringData") or {}
            named[f"k8s {obj['metadata']['name']}"] = set(data)
    for param in pod_specs():
        pod = param.values[0]
        for container in pod["containers"]:
            env = {item["name"] for item in container.get("env", [])}
            named[f"k8s {param.id} {container['name']}"] = env
    for name, service in SERVICES.items():
        named[f"compose {name}"] = set(service.get("environment", {}))
    for where, variables in named.items():
        unknown = {v for v in variables if v.startswith("FRAUD_")} - known
        assert not unknown, f"{where}: {sorted(unknown)} are not settings"
