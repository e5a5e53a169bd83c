"""The Kubernetes manifests, rendered by kustomize as a cluster would get them, validated offline:
Kubernetes' own objects against the API's JSON Schemas (kubernetes-validate, strict: an unknown
field is an error), the custom resources (KEDA, Prometheus Operator) against their CRDs' schemas
vendored in k8s_crd_schemas/; and what the deployment promises: one Deployment template, a
PodDisruptionBudget per service, a ScaledObject per consumer capped at its partitions, the
executor wired to HubSpot with its token, the PrometheusRule the same as deploy/prometheus/rules."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from changegate.core.topics import TOPICS, Topic
from jsonschema import Draft202012Validator
from k8s_render import kustomize

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
CRD_SCHEMAS = Path(__file__).parent / "k8s_crd_schemas"
KUBERNETES_VERSION = "1.33"
RULES = REPO_ROOT / "deploy" / "prometheus" / "rules" / "changegate.rules.yml"
Obj = dict[str, Any]

# Each consumer's group (as its code names it) and the topics it reads.
CONSUMERS: dict[str, tuple[str, list[Topic]]] = {
    "detector": ("changegate-detector", [Topic.CRM_EVENTS]),
    "policy": ("changegate-policy", [Topic.PROPOSALS]),
    "executor": ("changegate-executor", [Topic.DECISIONS]),
    "audit": ("changegate-audit", [Topic.DECISIONS, Topic.EXECUTIONS]),
    "review-api": ("changegate-review-api", [Topic.PROPOSALS_PENDING]),
}


def _strict(schema: Any) -> Any:
    """An object schema that names its properties allows no others (as kubeconform's strict mode)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_validator(obj: Obj) -> Draft202012Validator | None:
    group, _, version = obj["apiVersion"].partition("/")
    path = CRD_SCHEMAS / f"{obj['kind'].lower()}-{group.split('.')[0]}-{version}.json"
    if not path.is_file():
        return None
    return Draft202012Validator(_strict(json.loads(path.read_text())))


def problems(objects: list[Obj]) -> list[str]:
    found = []
    for obj in objects:
        name = f"{obj['kind']} {obj['metadata'].get('name')}"
        validator = crd_validator(obj)
        if validator is not None:
            found += [
                f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(obj)
            ]
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            found.append(
                f"{name}: no schema for {obj['apiVersion']} (neither Kubernetes' nor a vendored CRD's)"
            )
        except kubernetes_validate.ValidationError as exc:
            found.append(f"{name}: {'/'.join(map(str, exc.path))}: {exc.message}")
    return found


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return kustomize(K8S)


@pytest.fixture(scope="module")
def with_operators() -> list[Obj]:
    return kustomize(K8S / "overlays" / "with-operators")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    root = tmp_path_factory.mktemp("k8s")
    shutil.copytree(K8S, root / "k8s")
    (root / "try").mkdir()
    (root / "try" / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../k8s/base]\ncomponents: [../k8s/components/sandbox-crm]\n"
    )
    return kustomize(root / "try")


def of(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def env(deployment: Obj) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_the_base_validates_against_kubernetes(base: list[Obj]) -> None:
    assert not problems(base), "\n".join(problems(base))


def test_the_overlay_with_operators_validates_against_kubernetes_and_the_crds(
    with_operators: list[Obj],
) -> None:
    kinds = {o["kind"] for o in with_operators}
    assert {"ScaledObject", "ServiceMonitor", "PrometheusRule"} <= kinds
    assert not problems(with_operators), "\n".join(problems(with_operators))


def test_the_checks_can_fail(base: list[Obj], with_operators: list[Obj]) -> None:
    deployment = copy.deepcopy(of(base, "Deployment")["executor"])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert any("livenesProbe" in p for p in problems([deployment]))
    scaled = copy.deepcopy(of(with_operators, "ScaledObject")["executor"])
    scaled["spec"]["maxReplicaCount"] = "three"
    assert problems([scaled])
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert problems([unknown]) == [
        "Widget w: no schema for example.com/v1 (neither Kubernetes' nor a vendored CRD's)"
    ]


def _words(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()} | {
        line.strip().split(" ")[0] for line in text.splitlines() if line.strip()
    }


def test_one_deployment_template_no_copies() -> None:
    """Only the template spells out a container; each service's file says what is its own."""
    defining = [p for p in K8S.rglob("*.yaml") if {"kind: Deployment", "image:"} <= _words(p.read_text())]
    assert [p.relative_to(K8S).as_posix() for p in defining] == ["base/service/deployment.yaml"]


def test_every_service_has_a_disruption_budget_matching_its_pods(base: list[Obj]) -> None:
    budgets = of(base, "PodDisruptionBudget")
    for name, deployment in of(base, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budget = budgets.get(name)
        assert budget is not None, f"{name} has no PodDisruptionBudget"
        selector = budget["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"{name}'s budget selects {selector}, pods are {labels}"
        assert budget["spec"].get("maxUnavailable") == 1 or budget["spec"].get("minAvailable")


def test_every_consumer_scales_on_its_lag_up_to_its_partitions(with_operators: list[Obj]) -> None:
    scaled = of(with_operators, "ScaledObject")
    deployments = of(with_operators, "Deployment")
    prefix = of(with_operators, "ConfigMap")["changegate-config"]["data"]["CHANGEGATE_TOPIC_PREFIX"]
    assert set(scaled) == set(CONSUMERS), "a ScaledObject per consumer (ingest consumes nothing)"
    for name, (group, topics) in CONSUMERS.items():
        source = "\n".join(p.read_text() for p in (REPO_ROOT / "services" / name / "src").rglob("*.py"))
        assert f'"{group}"' in source, f"{name}'s code does not name its group {group}"
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        partitions = min(TOPICS[t].partitions for t in topics)
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
        [trigger] = spec["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == group
        assert trigger["metadata"]["allowIdleConsumers"] == "false"
        if "topic" in trigger["metadata"]:
            assert trigger["metadata"]["topic"] in {prefix + t.value for t in topics}
        container_env = env(deployments[name])
        assert trigger["metadata"]["bootstrapServersFromEnv"] == "CHANGEGATE_KAFKA_BOOTSTRAP_SERVERS"
        assert (
            "CHANGEGATE_KAFKA_BOOTSTRAP_SERVERS"
            in of(with_operators, "ConfigMap")["changegate-config"]["data"]
        )
        assert container_env.get("CHANGEGATE_SECRETS_DIR") == "/secrets"


def test_the_service_monitor_scrapes_every_service(with_operators: list[Obj]) -> None:
    [monitor] = of(with_operators, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s
        for s in of(with_operators, "Service").values()
        if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert {s["metadata"]["name"] for s in services} == set(of(with_operators, "Deployment"))
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for service in services:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The alerts and dashboards group by job: the service's name, as in docker-compose's Prometheus.
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"


def test_the_prometheus_rule_is_deploy_prometheus_rules(with_operators: list[Obj]) -> None:
    [rule] = of(with_operators, "PrometheusRule").values()
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), "run `make k8s-rules`"


def test_the_executor_writes_to_hubspot_with_its_token(base: list[Obj], sandbox: list[Obj]) -> None:
    executor = of(base, "Deployment")["executor"]
    assert env(executor)["CHANGEGATE_CRM"] == "hubspot"
    volumes = {v["name"]: v for v in executor["spec"]["template"]["spec"]["volumes"]}
    items = {i["key"]: i["path"] for i in volumes["keys"]["secret"]["items"]}
    assert items.get("hubspot-token") == "changegate_hubspot_token"  # CHANGEGATE_HUBSPOT_TOKEN as a file
    assert "hubspot-token" in of(base, "Secret")["changegate-secrets"]["stringData"]
    assert env(of(sandbox, "Deployment")["executor"])["CHANGEGATE_CRM"] == "sandbox"
    # Nobody else gets the token.
    for name, deployment in of(base, "Deployment").items():
        keys = {
            i["key"]
            for v in deployment["spec"]["template"]["spec"]["volumes"]
            for i in (v.get("secret") or {}).get("items", [])
        }
        assert ("hubspot-token" in keys) == (name == "executor"), name
