"""Contract tests for the deployment files.

They read the real files (docker-compose.yml, deploy/Dockerfile, deploy/prometheus, deploy/grafana,
deploy/k8s) and check them against the compose specification and against the code: every
container runs a service module that exists, every service folder is deployed, probed and scraped.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

# jsonschema ships no type information and types-jsonschema is not in requirements.lock.
from jsonschema import validators
from jsonschema.validators import validator_for
from k8s_render import kustomize

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
DOCKERFILE_REL = "deploy/Dockerfile"
PROMETHEUS_CONFIG_REL = "deploy/prometheus/prometheus.yml"
GRAFANA_PROVISIONING_REL = "deploy/grafana/provisioning"
GRAFANA_DATASOURCE = REPO_ROOT / GRAFANA_PROVISIONING_REL / "datasources" / "prometheus.yml"
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
SERVICES_DIR = REPO_ROOT / "services"
COMPOSE_SPEC = "compose/compose-spec.json"
DEFAULT_HTTP_PORT = 8000
METRICS_PATH = "/metrics"

# Services that keep no state, so have no database role: they take no DSN, wait for no migration,
# and every PostgreSQL check skips them (test_stateless_services_open_no_database holds them to it).
WITHOUT_DATABASE = {"ingest"}

# `python -m changegate.x`, also `python3`, `python3.11`, `/opt/venv/bin/python`, or inside `sh -c`.
MODULE_RE = re.compile(r"(?:^|[\s/'\"])python(?:3(?:\.\d+)?)?\s+-m\s+(changegate(?:\.\w+)+)")

SpecFile = Callable[[str], Path]
Mapping = dict[str, Any]


# --- helpers -------------------------------------------------------------------------------------


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def load_yaml(path: Path) -> Any:
    assert path.is_file(), f"{rel(path)} is missing"
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def as_mapping(value: object, where: str) -> Mapping:
    assert isinstance(value, dict), f"{where} must be a mapping, got {type(value).__name__}"
    return cast(Mapping, value)


def as_list(value: object, where: str) -> list[Any]:
    assert isinstance(value, list), f"{where} must be a list, got {type(value).__name__}"
    return value


def command_words(command: object) -> list[str]:
    """A compose/k8s command in either form (string or list) as a list of words."""
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    if isinstance(command, list):
        return [str(word) for word in command]
    raise AssertionError(f"unexpected command {command!r}")


def changegate_module(words: Iterable[str]) -> str | None:
    """The module of the first ``python -m changegate.x`` in a command, if any."""
    match = MODULE_RE.search(" ".join(words))
    return match.group(1) if match else None


def canonical_uri(uri: str) -> str:
    """``https://json-schema.org/draft-07/schema`` and ``http://…/schema#`` compare equal."""
    return uri.split("://", 1)[-1].rstrip("#").rstrip("/")


def schema_validator_class(schema: Mapping) -> Any:
    """The validator class for the draft a schema declares, by ``validator_for``.

    The compose spec spells its draft ``https://json-schema.org/draft-07/schema`` (https, no
    fragment), which jsonschema does not recognise literally and would replace by the latest draft;
    map such spellings onto the known metaschema id first."""
    declared = schema.get("$schema")
    if isinstance(declared, str):
        drafts = (
            validators.Draft202012Validator,
            validators.Draft201909Validator,
            validators.Draft7Validator,
            validators.Draft6Validator,
            validators.Draft4Validator,
            validators.Draft3Validator,
        )
        for draft in drafts:
            known = str(draft.META_SCHEMA.get("$id") or draft.META_SCHEMA.get("id"))
            if canonical_uri(known) == canonical_uri(declared):
                return validator_for({**schema, "$schema": known})
    return validator_for(schema)


def service_folders() -> list[Path]:
    assert SERVICES_DIR.is_dir(), "services/ is missing"
    folders = [
        path
        for path in sorted(SERVICES_DIR.iterdir())
        if path.is_dir() and not path.name.startswith((".", "_"))
    ]
    assert folders, "services/ holds no service folder"
    return folders


def folder_modules(folder: Path) -> set[str]:
    """The ``changegate.<package>`` modules a service folder provides (by its src layout)."""
    namespace = folder / "src" / "changegate"
    packages = (
        {
            f"changegate.{path.name}"
            for path in namespace.iterdir()
            if path.is_dir() and path.name.isidentifier() and not path.name.startswith("_")
        }
        if namespace.is_dir()
        else set()
    )
    return packages or {f"changegate.{folder.name.replace('-', '_')}"}


def main_file(module: str) -> Path | None:
    """``services/*/src/<module as path>/__main__.py`` if one exists."""
    relative = Path("src", *module.split("."), "__main__.py")
    for folder in service_folders():
        candidate = folder / relative
        if candidate.is_file():
            return candidate
    return None


def missing_main_message(where: str, module: str) -> str:
    expected = "services/*/src/" + "/".join(module.split(".")) + "/__main__.py"
    return f"{where} runs `python -m {module}` but no {expected} exists"


def environment(service: Mapping) -> dict[str, str]:
    """A compose service's environment (mapping or ``KEY=VALUE`` list form) as a dict."""
    raw = service.get("environment")
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return {str(key): "" if value is None else str(value) for key, value in raw.items()}
    result: dict[str, str] = {}
    for item in as_list(raw, "environment"):
        key, _, value = str(item).partition("=")
        result[key] = value
    return result


def http_port(service: Mapping) -> int:
    return int(environment(service).get("CHANGEGATE_HTTP_PORT", DEFAULT_HTTP_PORT))


def builds_our_dockerfile(service: Mapping) -> bool:
    build = service.get("build")
    if isinstance(build, dict):
        dockerfile = str(build.get("dockerfile", "Dockerfile"))
        return dockerfile.removeprefix("./") == DOCKERFILE_REL
    return False


def mounts(service: Mapping) -> list[tuple[str, str]]:
    """(source, target) of a compose service's volumes, short or long syntax."""
    result: list[tuple[str, str]] = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            result.append((source.removeprefix("./"), rest.split(":")[0]))
        elif isinstance(volume, dict):
            source = str(volume.get("source", "")).removeprefix("./")
            result.append((source, str(volume.get("target", ""))))
    return result


def services_by_image(compose_services: dict[str, Mapping], prefix: str) -> list[str]:
    return [
        name
        for name, service in compose_services.items()
        if str(service.get("image", "")).split(":")[0] == prefix
    ]


# --- compose fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Mapping:
    return as_mapping(load_yaml(COMPOSE_FILE), "docker-compose.yml")


@pytest.fixture(scope="module")
def compose_services(compose: Mapping) -> dict[str, Mapping]:
    services = as_mapping(compose.get("services"), "services")
    return {name: as_mapping(body, f"services.{name}") for name, body in services.items()}


def runs_changegate(service: Mapping) -> bool:
    return (
        builds_our_dockerfile(service) or changegate_module(command_words(service.get("command"))) is not None
    )


def is_job(service: Mapping) -> bool:
    """A one-shot job (keys, migrations) rather than a service: it runs once and exits."""
    return str(service.get("restart", "no")) == "no"


@pytest.fixture(scope="module")
def our_services(compose_services: dict[str, Mapping]) -> dict[str, Mapping]:
    """Compose services that run changegate code (built from our Dockerfile or running a module),
    one-shot jobs excepted."""
    ours = {
        name: service
        for name, service in compose_services.items()
        if runs_changegate(service) and not is_job(service)
    }
    assert ours, "docker-compose.yml runs no changegate service"
    return ours


@pytest.fixture(scope="module")
def our_jobs(compose_services: dict[str, Mapping]) -> dict[str, Mapping]:
    return {name: s for name, s in compose_services.items() if runs_changegate(s) and is_job(s)}


# --- (a) the compose file is valid ----------------------------------------------------------------


def test_compose_validates_against_compose_spec(compose: Mapping, spec_file: SpecFile) -> None:
    schema = json.loads(spec_file(COMPOSE_SPEC).read_text(encoding="utf-8"))
    validator_class = schema_validator_class(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(compose), key=lambda error: [str(p) for p in error.absolute_path])
    problems = [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}" for error in errors
    ]
    assert not problems, "docker-compose.yml violates the compose spec:\n" + "\n".join(problems)


# --- (b) compose services <-> service modules -----------------------------------------------------


def test_compose_commands_run_existing_service_modules(our_services: dict[str, Mapping]) -> None:
    problems: list[str] = []
    for name, service in our_services.items():
        module = changegate_module(command_words(service.get("command")))
        if module is None:
            problems.append(f"compose service {name!r}: our image, but no changegate module")
        elif main_file(module) is None:
            problems.append(missing_main_message(f"compose service {name!r}", module))
    assert not problems, "\n".join(problems)


def test_every_service_folder_runs_in_compose(our_services: dict[str, Mapping]) -> None:
    running = {changegate_module(command_words(service.get("command"))) for service in our_services.values()}
    missing = [
        f"services/{folder.name} ({' or '.join(sorted(folder_modules(folder)))})"
        for folder in service_folders()
        if not folder_modules(folder) & running
    ]
    assert not missing, "not run by any compose service: " + ", ".join(missing)


# --- (c) health, dependencies, scraping -----------------------------------------------------------


def test_our_services_have_readiness_healthchecks(our_services: dict[str, Mapping]) -> None:
    problems: list[str] = []
    for name, service in our_services.items():
        check = service.get("healthcheck")
        if not isinstance(check, dict) or check.get("disable"):
            problems.append(f"{name}: no healthcheck")
            continue
        words = command_words(check.get("test"))
        if not words or words[0] == "NONE":
            problems.append(f"{name}: healthcheck has no test")
            continue
        if f":{http_port(service)}/readyz" not in " ".join(words):
            problems.append(f"{name}: healthcheck does not call :{http_port(service)}/readyz")
    assert not problems, "\n".join(problems)


def test_our_services_wait_for_healthy_kafka_and_postgres(
    compose_services: dict[str, Mapping], our_services: dict[str, Mapping]
) -> None:
    kafka = services_by_image(compose_services, "apache/kafka")
    postgres = services_by_image(compose_services, "postgres")
    assert len(kafka) == 1, f"expected one apache/kafka service, found {kafka}"
    assert len(postgres) == 1, f"expected one postgres service, found {postgres}"
    infrastructure = kafka + postgres
    problems = [
        f"{name} has no healthcheck"
        for name in infrastructure
        if not isinstance(compose_services[name].get("healthcheck"), dict)
    ]
    for name, service in our_services.items():
        depends_on = service.get("depends_on")
        conditions = (
            {dep: (cond or {}).get("condition") for dep, cond in depends_on.items()}
            if isinstance(depends_on, dict)
            else {}
        )
        needed = kafka if name in WITHOUT_DATABASE else infrastructure
        problems.extend(
            f"{name} does not wait for {dep} with condition service_healthy"
            for dep in needed
            if conditions.get(dep) != "service_healthy"
        )
        env = environment(service)
        kafka_hosts = {
            server.rsplit(":", 1)[0]
            for server in env.get("CHANGEGATE_KAFKA_BOOTSTRAP_SERVERS", "").split(",")
        }
        if kafka[0] not in kafka_hosts:
            problems.append(f"{name}: CHANGEGATE_KAFKA_BOOTSTRAP_SERVERS does not name {kafka[0]}")
        if name in WITHOUT_DATABASE:
            if "CHANGEGATE_DATABASE_URL" in env:
                problems.append(f"{name}: needs no database, yet is given CHANGEGATE_DATABASE_URL")
        elif f"@{postgres[0]}:" not in env.get("CHANGEGATE_DATABASE_URL", ""):
            problems.append(f"{name}: CHANGEGATE_DATABASE_URL does not point at {postgres[0]}")
        if env.get("CHANGEGATE_HTTP_HOST") != "0.0.0.0":
            problems.append(f"{name}: CHANGEGATE_HTTP_HOST must be 0.0.0.0 in a container")
    assert not problems, "\n".join(problems)


def test_services_start_after_the_key_and_migration_jobs_as_their_own_roles(
    our_services: dict[str, Mapping], our_jobs: dict[str, Mapping]
) -> None:
    jobs = [" ".join(command_words(j.get("command"))) for j in our_jobs.values()]
    assert any("migrate" in job for job in jobs), jobs
    assert any("keys generate" in job for job in jobs), jobs
    problems: list[str] = []
    for name, service in our_services.items():
        env = environment(service)
        if env.get("CHANGEGATE_SECRETS_DIR") != f"/secrets/{name}":
            problems.append(f"{name} does not read its secrets from /secrets/{name}")
        if name in WITHOUT_DATABASE:  # neither keys to sign with nor a schema to wait for
            continue
        depends_on = service.get("depends_on") or {}
        for job in our_jobs:
            if (depends_on.get(job) or {}).get("condition") != "service_completed_successfully":
                problems.append(f"{name} does not wait for the job {job} to complete")
        user = env.get("CHANGEGATE_DATABASE_URL", "").split("://", 1)[-1].split(":", 1)[0]
        if user != f"changegate_{name.replace('-', '_')}":
            problems.append(f"{name} connects as {user!r}, not its own role")
        if env.get("CHANGEGATE_MIGRATE_ON_START") != "false":
            problems.append(f"{name} may migrate at start: its role must not")
    assert not problems, "\n".join(problems)


def test_only_the_apis_are_published_and_only_on_loopback(our_services: dict[str, Mapping]) -> None:
    published = {name for name, service in our_services.items() if service.get("ports")}
    assert published <= {"review-api", "audit", "ingest"}, published
    for name in published:
        for port in our_services[name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def prometheus_targets(config: Mapping) -> set[tuple[str, int, str]]:
    """(host, port, metrics path) of every static or DNS-A target in a Prometheus config."""
    targets: set[tuple[str, int, str]] = set()
    for job in as_list(config.get("scrape_configs"), "scrape_configs"):
        job_map = as_mapping(job, "scrape_configs[]")
        path = str(job_map.get("metrics_path", METRICS_PATH))
        for static in job_map.get("static_configs") or []:
            for target in as_mapping(static, "static_configs[]").get("targets") or []:
                host, _, port = str(target).rpartition(":")
                targets.add((host, int(port), path))
        for dns in job_map.get("dns_sd_configs") or []:
            dns_map = as_mapping(dns, "dns_sd_configs[]")
            if dns_map.get("type", "SRV") in {"A", "AAAA"} and "port" in dns_map:
                targets.update((str(n), int(dns_map["port"]), path) for n in dns_map["names"])
    return targets


def test_prometheus_scrapes_every_service(
    compose_services: dict[str, Mapping], our_services: dict[str, Mapping]
) -> None:
    prometheus = services_by_image(compose_services, "prom/prometheus")
    assert len(prometheus) == 1, f"expected one prom/prometheus service, found {prometheus}"
    sources = [source for source, _ in mounts(compose_services[prometheus[0]])]
    assert PROMETHEUS_CONFIG_REL in sources, f"{prometheus[0]} does not mount {PROMETHEUS_CONFIG_REL}"

    config = as_mapping(load_yaml(REPO_ROOT / PROMETHEUS_CONFIG_REL), PROMETHEUS_CONFIG_REL)
    targets = prometheus_targets(config)
    missing = [
        f"{name}:{http_port(service)}{METRICS_PATH}"
        for name, service in our_services.items()
        if (name, http_port(service), METRICS_PATH) not in targets
    ]
    assert not missing, f"{PROMETHEUS_CONFIG_REL} does not scrape: " + ", ".join(missing)


def test_grafana_provisions_the_prometheus_datasource(
    compose_services: dict[str, Mapping],
) -> None:
    grafana = services_by_image(compose_services, "grafana/grafana")
    prometheus = services_by_image(compose_services, "prom/prometheus")
    assert len(grafana) == 1, f"expected one grafana/grafana service, found {grafana}"
    assert prometheus, "no prom/prometheus service"
    assert (GRAFANA_PROVISIONING_REL, "/etc/grafana/provisioning") in mounts(compose_services[grafana[0]]), (
        f"{grafana[0]} does not mount {GRAFANA_PROVISIONING_REL} at /etc/grafana/provisioning"
    )

    provisioning = as_mapping(load_yaml(GRAFANA_DATASOURCE), rel(GRAFANA_DATASOURCE))
    urls = [
        str(source.get("url", ""))
        for source in as_list(provisioning.get("datasources"), "datasources")
        if isinstance(source, dict) and source.get("type") == "prometheus"
    ]
    assert f"http://{prometheus[0]}:9090" in urls, f"no datasource for {prometheus[0]}: {urls}"


# --- the image ------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    assert DOCKERFILE.is_file(), f"{DOCKERFILE_REL} is missing"
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    if pending:
        logical.append(pending)
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (entry.split(None, 1) for entry in logical)
    ]


def test_dockerfile_installs_every_member_and_drops_root() -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for name, args in instructions if name == "FROM"]
    assert bases, "no FROM"
    args = dict(a.split("=", 1) for name, a in instructions if name == "ARG" and "=" in a)
    resolved = [args.get(b.strip("${}"), b) if b.startswith("$") else b for b in bases]
    assert resolved[-1] == "python:3.11-slim", f"final stage is {resolved[-1]}"

    runs = [args_ for name, args_ in instructions if name == "RUN"]
    assert any("--require-hashes" in run and "requirements.lock" in run for run in runs), (
        "requirements.lock is not installed with --require-hashes"
    )
    member_install = next((run for run in runs if "--no-build-isolation" in run), "")
    words = set(shlex.split(member_install))
    expected = {"shared"} | {f"services/{folder.name}" for folder in service_folders()}
    assert not expected - words, f"not installed in the image: {sorted(expected - words)}"

    users = [args_.split(":")[0] for name, args_ in instructions if name == "USER"]
    assert users, "the image runs as root: no USER"
    assert users[-1] not in {"root", "0"}, f"the image runs as {users[-1]}"


# --- (d) Kubernetes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s_documents() -> list[tuple[Path, Mapping]]:
    """The objects `kubectl apply -k deploy/k8s` creates (kustomize renders the base)."""
    documents: list[tuple[Path, Mapping]] = []
    for document in kustomize(K8S_DIR):
        body = as_mapping(document, rel(K8S_DIR))
        assert body.get("apiVersion"), f"{rel(K8S_DIR)}: a document has no apiVersion"
        assert body.get("kind"), f"{rel(K8S_DIR)}: a document has no kind"
        documents.append((K8S_DIR, body))
    return documents


def of_kind(documents: list[tuple[Path, Mapping]], kind: str) -> list[Mapping]:
    return [body for _, body in documents if body["kind"] == kind]


def containers(deployment: Mapping) -> list[Mapping]:
    spec = as_mapping(deployment["spec"]["template"]["spec"], "pod spec")
    return [as_mapping(c, "container") for c in as_list(spec.get("containers"), "containers")]


def test_k8s_objects_are_named(k8s_documents: list[tuple[Path, Mapping]]) -> None:
    unnamed = [
        f"{rel(path)}: {body['kind']}"
        for path, body in k8s_documents
        if body["kind"] != "Kustomization"
        and not (isinstance(body.get("metadata"), dict) and body["metadata"].get("name"))
    ]
    assert not unnamed, "objects without metadata.name: " + ", ".join(unnamed)
    assert of_kind(k8s_documents, "Namespace"), "no Namespace"


def test_k8s_deployments_run_existing_service_modules(
    k8s_documents: list[tuple[Path, Mapping]],
) -> None:
    deployments = of_kind(k8s_documents, "Deployment")
    assert deployments, "no Deployment"
    running: set[str] = set()
    problems: list[str] = []
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        for container in containers(deployment):
            words = command_words(container.get("command")) + command_words(container.get("args"))
            module = changegate_module(words)
            if module is None:
                problems.append(f"Deployment {name}: container runs no changegate module")
                continue
            running.add(module)
            if main_file(module) is None:
                problems.append(missing_main_message(f"Deployment {name}", module))
    problems.extend(
        f"services/{folder.name} has no Deployment"
        for folder in service_folders()
        if not folder_modules(folder) & running
    )
    assert not problems, "\n".join(problems)


def test_k8s_deployments_are_probed_limited_and_scraped(
    k8s_documents: list[tuple[Path, Mapping]],
) -> None:
    problems: list[str] = []
    for deployment in of_kind(k8s_documents, "Deployment"):
        name = deployment["metadata"]["name"]
        annotations = deployment["spec"]["template"].get("metadata", {}).get("annotations") or {}
        if annotations.get("prometheus.io/scrape") != "true":
            problems.append(f"{name}: pod template lacks prometheus.io/scrape: 'true'")
        if annotations.get("prometheus.io/path", METRICS_PATH) != METRICS_PATH:
            problems.append(f"{name}: prometheus.io/path is not {METRICS_PATH}")
        for container in containers(deployment):
            ports = {str(p.get("name")): int(p["containerPort"]) for p in container.get("ports") or []}
            if annotations.get("prometheus.io/port") not in {str(v) for v in ports.values()}:
                problems.append(f"{name}: prometheus.io/port is not a container port")
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = (container.get(probe) or {}).get("httpGet") or {}
                if get.get("path") != path:
                    problems.append(f"{name}: {probe} does not GET {path}")
                elif str(get.get("port")) not in {*ports, *map(str, ports.values())}:
                    problems.append(f"{name}: {probe} port {get.get('port')} is not declared")
            resources = container.get("resources") or {}
            problems.extend(
                f"{name}: resources.{bound}.{resource} missing"
                for bound in ("requests", "limits")
                for resource in ("cpu", "memory")
                if not (resources.get(bound) or {}).get(resource)
            )
    assert not problems, "\n".join(problems)


def test_k8s_services_front_the_apis(
    k8s_documents: list[tuple[Path, Mapping]],
) -> None:
    pod_labels = {
        deployment["metadata"]["name"]: deployment["spec"]["template"]["metadata"]["labels"]
        for deployment in of_kind(k8s_documents, "Deployment")
    }
    services = {body["metadata"]["name"]: body for body in of_kind(k8s_documents, "Service")}
    problems: list[str] = []
    for name in ("review-api", "audit", "ingest"):
        service = services.get(name)
        if service is None:
            problems.append(f"no Service {name}")
            continue
        selector: dict[str, str] = service["spec"].get("selector") or {}
        labels: dict[str, str] = pod_labels.get(name, {})
        if not selector or any(labels.get(key) != value for key, value in selector.items()):
            problems.append(f"Service {name} selector {selector} does not match Deployment {name}")
    assert not problems, "\n".join(problems)


def test_k8s_configuration_references_resolve(
    k8s_documents: list[tuple[Path, Mapping]],
) -> None:
    config_maps = {body["metadata"]["name"] for body in of_kind(k8s_documents, "ConfigMap")}
    secrets = {
        body["metadata"]["name"]: set((body.get("stringData") or {}) | (body.get("data") or {}))
        for body in of_kind(k8s_documents, "Secret")
    }
    problems: list[str] = []
    for deployment in of_kind(k8s_documents, "Deployment"):
        name = deployment["metadata"]["name"]
        for container in containers(deployment):
            env_names = {str(e.get("name")) for e in container.get("env") or []}
            for source in container.get("envFrom") or []:
                ref = (source.get("configMapRef") or {}).get("name")
                if ref is not None and ref not in config_maps:
                    problems.append(f"{name}: ConfigMap {ref} is not defined")
            for variable in container.get("env") or []:
                key_ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
                if key_ref and key_ref.get("key") not in secrets.get(key_ref.get("name"), set()):
                    problems.append(f"{name}: secret {key_ref.get('name')}/{key_ref.get('key')}")
            if name in WITHOUT_DATABASE:
                if "CHANGEGATE_DATABASE_URL" in env_names:
                    problems.append(f"{name}: needs no database, yet is given CHANGEGATE_DATABASE_URL")
            elif "CHANGEGATE_DATABASE_URL" not in env_names:
                problems.append(f"{name}: CHANGEGATE_DATABASE_URL is not set from the Secret")
        for volume in deployment["spec"]["template"]["spec"].get("volumes") or []:
            secret = volume.get("secret") or {}
            for item in secret.get("items") or []:
                if item["key"] not in secrets.get(secret.get("secretName"), set()):
                    problems.append(f"{name}: volume {volume['name']} mounts missing {item['key']}")
    assert not problems, "\n".join(problems)


def test_k8s_denies_ingress_but_to_the_apis_and_migrates_before_the_services(
    k8s_documents: list[tuple[Path, Mapping]],
) -> None:
    policies = {body["metadata"]["name"]: body["spec"] for body in of_kind(k8s_documents, "NetworkPolicy")}
    deny = [p for p in policies.values() if p.get("podSelector") == {} and not p.get("ingress")]
    assert deny, "no default-deny NetworkPolicy"
    open_to_all = [
        p
        for p in policies.values()
        if p.get("ingress") and not any(rule.get("from") for rule in p["ingress"])
    ]
    reachable = {v for p in open_to_all for e in p["podSelector"]["matchExpressions"] for v in e["values"]}
    assert reachable <= {"review-api", "audit", "ingest"}, reachable
    [job] = [j for j in of_kind(k8s_documents, "Job") if j["metadata"]["name"] == "migrate"]
    words = command_words(job["spec"]["template"]["spec"]["containers"][0]["command"])
    assert words[-1] == "migrate"
    for deployment in of_kind(k8s_documents, "Deployment"):
        name = deployment["metadata"]["name"]
        for container in containers(deployment):
            env = {e["name"]: e for e in container.get("env") or []}
            assert env["CHANGEGATE_SECRETS_DIR"]["value"] == "/secrets"
            if name in WITHOUT_DATABASE:
                continue
            key = env["CHANGEGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"]
            assert key == f"{name}-database-url", f"{name} does not connect as its own role"


def test_stateless_services_open_no_database() -> None:
    """What lets WITHOUT_DATABASE skip the PostgreSQL checks: those services' code never opens one."""
    for name in WITHOUT_DATABASE:
        sources = [p.read_text(encoding="utf-8") for p in (SERVICES_DIR / name / "src").rglob("*.py")]
        assert sources, f"services/{name} holds no code"
        opened = [
            word for word in ("open_database", "create_pool", "asyncpg") if any(word in s for s in sources)
        ]
        assert not opened, f"services/{name} uses {opened}: it needs a database role after all"


def test_compose_wires_the_executor_to_hubspot_with_its_token(our_services: dict[str, Mapping]) -> None:
    executor = environment(our_services["executor"])
    assert executor["CHANGEGATE_CRM"] == "${EXECUTOR_CRM:-hubspot}", "production writes to HubSpot by default"
    assert executor["CHANGEGATE_HUBSPOT_TOKEN"] == "${HUBSPOT_TOKEN:-}"
    for name, service in our_services.items():
        if name != "executor":
            assert "CHANGEGATE_HUBSPOT_TOKEN" not in environment(service), f"{name} gets the CRM token"


def test_an_empty_token_variable_leaves_the_token_to_the_secrets_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Compose passes without HUBSPOT_TOKEN: an empty variable, which is no token at all (the
    executor then refuses to start on HubSpot), and which a token file still fills."""
    from changegate.executor.settings import ExecutorSettings

    monkeypatch.setenv("CHANGEGATE_HUBSPOT_TOKEN", "")
    assert ExecutorSettings().hubspot_token is None
    (tmp_path / "changegate_hubspot_token").write_text("pat-from-a-file")
    token = ExecutorSettings(_secrets_dir=tmp_path).hubspot_token
    assert token is not None
    assert token.get_secret_value() == "pat-from-a-file"
