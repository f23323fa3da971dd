"""The deployment files agree with the code and with each other: settings names and defaults, ports, probe
paths, grace periods, and a load balancer that passes WebSockets."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from notifier.app import create_app
from notifier.runtime.workers import shutdown_bound_s, worker_count
from notifier.settings import Settings
from tests.dockerfile import DOCKERFILE, stages
from tests.support import SECRET

ROOT = DOCKERFILE.parent
CONFIG = ROOT / "config"
COMPOSE = CONFIG / "compose.yaml"
ENV_FILE = CONFIG / "notifier.env"
K8S = CONFIG / "k8s"
SERVER_PING_INTERVAL_S = 20  # docs/protocol.md: server-side WebSocket pings every 20 s
NOTIFIER_VARIABLE = re.compile(r"\bNOTIFIER_[A-Z0-9_]+\b")


def setting_names() -> set[str]:
    return {f"NOTIFIER_{name.upper()}" for name in Settings.model_fields}


def settings_from(variables: dict[str, str]) -> Settings:
    """Settings as the service would read them from these NOTIFIER_* variables alone."""
    values = {key.removeprefix("NOTIFIER_").lower(): value for key, value in variables.items()}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg,arg-type]


@pytest.fixture(autouse=True)
def no_notifier_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the files under test speak: the runner's own NOTIFIER_* variables are out of the way."""
    import os

    for key in os.environ:
        if key.startswith("NOTIFIER_"):
            monkeypatch.delenv(key)


def image_port() -> int:
    final = stages()[-1]
    exposed = final.one("EXPOSE").args.split()
    assert len(exposed) == 1, exposed
    return int(exposed[0].removesuffix("/tcp"))


async def answers(path: str) -> bool:
    """The app has a route at `path` (asked over ASGI, without starting it: a not-ready /readyz still counts)."""
    app = create_app(Settings(_env_file=None, jwt_secret=SECRET))  # type: ignore[call-arg]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifier") as client:
        status = (await client.get(path)).status_code
    return status != 404


def k8s_documents() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object under config/k8s by kind (one of each)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in found, f"two {document['kind']} objects"
            found[document["kind"]] = document
    return found


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, with `${VAR:-default}` taken at its default."""
    environment = service["environment"]
    assert isinstance(environment, dict), "write environment as a mapping"
    return {key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for key, value in environment.items()}


def duration_s(value: str) -> float:
    """Compose durations such as 30s, 1m30s."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", value)
    assert parts and "".join(number + unit for number, unit in parts) == value, value
    return sum(float(number) * units[unit] for number, unit in parts)


# Settings.


@pytest.mark.parametrize(
    "path",
    [DOCKERFILE, COMPOSE, ENV_FILE, *sorted(K8S.glob("*.yaml"))],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_every_notifier_variable_named_is_a_real_setting(path: Path) -> None:
    named = set(NOTIFIER_VARIABLE.findall(path.read_text()))
    unknown = named - setting_names()
    assert not unknown, f"{path.name} names variables that are no setting: {sorted(unknown)}"


def test_notifier_env_documents_every_setting_once_with_its_default(tmp_path: Path) -> None:
    documented = re.findall(r"^# (NOTIFIER_[A-Z0-9_]+)=(.*)$", ENV_FILE.read_text(), flags=re.MULTILINE)
    names = [name for name, _ in documented]
    assert sorted(names) == sorted(setting_names()), "each Settings field once, as `# NOTIFIER_NAME=default`"
    # Uncommented, the file must change nothing: what it shows are the real defaults.
    uncommented = tmp_path / "defaults.env"
    uncommented.write_text("".join(f"{name}={value}\n" for name, value in documented))
    from_file = Settings(_env_file=uncommented)  # type: ignore[call-arg]
    assert from_file.model_dump() == Settings(_env_file=None).model_dump()  # type: ignore[call-arg]


def test_image_env_is_valid_settings_and_listens_on_the_exposed_port() -> None:
    final = stages()[-1]
    settings = settings_from({key: value for key, value in final.env().items() if key.startswith("NOTIFIER_")})
    assert settings.port == image_port()
    assert settings.host == "0.0.0.0"


# Compose.


def test_compose_runs_rabbitmq_two_notifier_replicas_and_a_load_balancer() -> None:
    services = compose()["services"]
    assert set(services) == {"rabbitmq", "notifier", "nginx"}
    for name, service in services.items():
        image = service["image"]
        if name != "notifier":
            assert re.search(r":\d+\.\d+\.\d+", image), f"{name}: pin an exact image version, not {image}"
    assert "management" in services["rabbitmq"]["image"]

    notifier = services["notifier"]
    context = (COMPOSE.parent / notifier["build"]["context"]).resolve()
    assert context == ROOT and (context / notifier["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert notifier["deploy"]["replicas"] == 2
    assert notifier["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert [int(port) for port in notifier["expose"]] == [image_port()]
    assert "ports" not in notifier, "replicas are reached through the load balancer only"

    settings = settings_from(compose_environment(notifier))
    assert settings.demo_page
    assert "@rabbitmq:5672/" in settings.amqp_url
    rabbitmq_env = services["rabbitmq"]["environment"]
    credentials = f"{rabbitmq_env['RABBITMQ_DEFAULT_USER']}:{rabbitmq_env['RABBITMQ_DEFAULT_PASS']}"
    assert settings.amqp_url.startswith(f"amqp://{credentials}@"), "notifier must log in as the user RabbitMQ makes"
    assert duration_s(notifier["stop_grace_period"]) > shutdown_bound_s(settings)

    published = [str(port).split(":") for port in services["nginx"]["ports"]]
    assert len(published) == 1
    assert f"http://localhost:{published[0][0]}" in settings.allowed_origins, "the demo page's origin"


def test_compose_load_balancer_proxies_websockets_to_every_replica() -> None:
    nginx = compose()["services"]["nginx"]
    mounts = [volume.split(":") for volume in nginx["volumes"]]
    config_files = [COMPOSE.parent / source for source, target, *_ in mounts if target == "/etc/nginx/nginx.conf"]
    assert len(config_files) == 1 and config_files[0].exists()
    text = re.sub(r"#.*", "", config_files[0].read_text())
    directives = {" ".join(line.split()).rstrip(";") for line in text.splitlines() if line.strip()}

    # A variable proxy_pass is resolved per request (every 10 s at most) over all the replicas' addresses.
    assert f"set $notifier_upstream http://notifier:{image_port()}" in directives
    assert "proxy_pass $notifier_upstream" in directives
    assert "resolver 127.0.0.11 valid=10s ipv6=off" in directives
    assert "proxy_set_header Host $http_host" in directives, "Host with its port, for the same-origin check"
    assert "proxy_http_version 1.1" in directives
    assert "proxy_set_header Upgrade $http_upgrade" in directives
    # Connection must say "upgrade" when the client asked for one.
    assert "proxy_set_header Connection $connection_upgrade" in directives
    assert "map $http_upgrade $connection_upgrade {" in directives
    assert "default upgrade" in directives
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        values = [line.split()[1] for line in directives if line.startswith(timeout + " ")]
        assert values, f"no {timeout}"
        for value in values:
            assert int(value.removesuffix("s")) > SERVER_PING_INTERVAL_S, f"{timeout} must outlast the ping interval"
    assert not any(word in text for word in ("ip_hash", "sticky", "hash ")), "no stickiness is needed"
    # The HTTP stream: nothing buffered, and a read timeout well past two heartbeats (NOTIFIER_SSE_HEARTBEAT_S).
    stream = text.split("location /sse {", 1)[1].split("}", 1)[0]
    stream_directives = {" ".join(line.split()).rstrip(";") for line in stream.splitlines() if line.strip()}
    assert {"proxy_pass $notifier_upstream", "proxy_buffering off", "proxy_set_header Host $http_host"} <= (
        stream_directives
    )
    (read_timeout,) = [line.split()[1] for line in stream_directives if line.startswith("proxy_read_timeout ")]
    assert int(read_timeout.removesuffix("s")) >= 10 * Settings.model_fields["sse_heartbeat_s"].default


# Kubernetes.


def test_k8s_has_deployment_service_disruption_budget_and_example_secret() -> None:
    assert set(k8s_documents()) == {"Deployment", "Service", "PodDisruptionBudget", "Secret", "Kustomization"}
    kustomization = k8s_documents()["Kustomization"]
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists(), resource


async def test_k8s_deployment_probes_ports_and_grace_period_match_the_service() -> None:
    documents = k8s_documents()
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": image_port()}

    assert not await answers("/no-such-route"), "the route check below must be able to fail"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == path and await answers(path), (probe, http_get)
        assert http_get["port"] in ports or http_get["port"] in ports.values()

    env = {item["name"]: item for item in container["env"]}
    settings = settings_from({name: item["value"] for name, item in env.items() if "value" in item})
    pre_stop_s = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + shutdown_bound_s(settings)
    assert settings.shutdown_timeout_s < pod["terminationGracePeriodSeconds"]

    # NOTIFIER_WORKERS follows the CPU limit, one worker per core, within the setting's bounds.
    workers = env["NOTIFIER_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert workers["resource"] == "limits.cpu" and workers["divisor"] == "1"
    cpu_limit = container["resources"]["limits"]["cpu"]
    cores = float(cpu_limit[:-1]) / 1000 if cpu_limit.endswith("m") else float(cpu_limit)
    assert worker_count(settings_from({"NOTIFIER_WORKERS": str(math.ceil(cores))})) >= 1

    service = documents["Service"]["spec"]
    labels = documents["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert [port["targetPort"] for port in service["ports"]] == ["http"]
    assert "sessionAffinity" not in service
    assert documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert documents["Deployment"]["spec"]["replicas"] >= 2, "a disruption budget needs more than one pod"


def test_k8s_pod_has_resources_and_runs_as_the_image_user_without_root() -> None:
    pod = k8s_documents()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys(), kind
    image_uid = int(stages()[-1].one("USER").args.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_k8s_secret_example_holds_valid_token_and_api_settings() -> None:
    documents = k8s_documents()
    secret = documents["Secret"]["stringData"]
    assert {"NOTIFIER_JWT_SECRET", "NOTIFIER_API_KEYS"} <= secret.keys()
    settings = settings_from(secret)
    settings.require_token_key()
    assert len(settings.api_keys) >= 1
    (container,) = documents["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": documents["Secret"]["metadata"]["name"]}} in container["envFrom"]
