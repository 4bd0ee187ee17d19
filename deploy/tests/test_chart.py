"""The Helm chart through the real Helm engine (helm-python-sdk): lint, render
with every values set in values/, validate every object against the Kubernetes
schemas, and check what matters for running pubmesh."""

from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import (
    ALERTS, BAD_VALUES, CHART, DASHBOARDS, NAMESPACE, RELEASE, REPO, VALUES,
    by_kind, load_values, node_deployment, one, render, render_notes,
)

VALUE_SETS = sorted(VALUES.glob("*.yaml"))
BAD_SETS = sorted(BAD_VALUES.glob("*.yaml"))
# The oldest Kubernetes the chart's features need (native preStop sleep: 1.30)
# and the newest schema kubernetes-validate ships.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}


def ids(paths):
    return [p.stem for p in paths]


def container(objects) -> dict:
    pod = node_deployment(objects)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "pubmesh")


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def config_toml(objects) -> str:
    cms = [c for c in by_kind(objects, "ConfigMap") if "pubmesh.toml" in c.get("data", {})]
    assert len(cms) == 1
    return cms[0]["data"]["pubmesh.toml"]


def parse_toml(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


# --- lint and schema --------------------------------------------------------

@pytest.mark.parametrize("values_file", VALUE_SETS, ids=ids(VALUE_SETS))
def test_chart_lints_clean_in_strict_mode(values_file):
    report = helm.lint(CHART, load_values(values_file), strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize("values_file", BAD_SETS, ids=ids(BAD_SETS))
def test_bad_values_are_rejected_by_the_schema(values_file):
    values = load_values(values_file)
    # line 2 of each file: what the error message must name
    names = values_file.read_text().splitlines()[1].removeprefix("# names: ")
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as schema_err:
            chart.validate_schema(values)
        # install/upgrade render the same check: nothing reaches the cluster
        with pytest.raises(helm.HelmValuesError) as render_err:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert "schema" in str(render_err.value), render_err.value
    assert names in str(schema_err.value) and names in str(render_err.value), schema_err.value


def test_every_default_value_passes_the_schema_and_the_schema_is_closed():
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({})
        schema = chart.schema
    assert schema["additionalProperties"] is False
    assert schema["properties"]["config"]["additionalProperties"] is False


@pytest.mark.parametrize(
    "values, message",
    [
        ({"terminationGracePeriodSeconds": 12}, "must be at least"),
        ({"replicaCount": 3}, "needs Redis"),
        ({"autoscaling": {"enabled": True}}, "needs Redis"),
        ({"config": {"require_auth": True}}, "needs a JWT key"),
        ({"config": {"namespaces": [{"pattern": "staff:*", "subscribe": "claim"}]}}, "it needs a JWT key"),
        ({"adminPort": 8000}, "adminPort must differ"),
        ({"auth": {"existingSecret": "s", "apiKey": "k"}}, "leave auth.apiKey"),
        ({"httpRoute": {"enabled": True}}, "parentRefs"),
        ({"redis": {"urls": ["redis://r:6379"]}, "pdb": {"minAvailable": 1}}, "only one of"),
    ],
    ids=["grace-too-short", "replicas-without-redis", "hpa-without-redis", "auth-without-key",
         "namespace-auth-without-key", "admin-port-is-client-port",
         "existing-secret-and-key", "httproute-without-gateway", "pdb-both"],
)
def test_inconsistent_values_fail_the_render_with_a_message(values, message):
    with pytest.raises(helm.HelmError) as err:
        render(values)
    assert message in str(err.value)


# --- every object is valid Kubernetes --------------------------------------

@pytest.mark.parametrize("values_file", VALUE_SETS, ids=ids(VALUE_SETS))
def test_rendered_objects_are_valid_kubernetes(values_file):
    objects = render(load_values(values_file))
    assert objects
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"].get("namespace") == NAMESPACE or obj["kind"] == "ConfigMap", name
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, name
        assert labels["app.kubernetes.io/managed-by"] == "Helm", name
        if key in CRDS:
            check_crd_structure(obj)
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def check_crd_structure(obj: dict) -> None:
    """Custom resources kubernetes-validate has no schema for."""
    spec = obj["spec"]
    kind = obj["kind"]
    if kind == "ServiceMonitor":
        assert set(spec) <= {"jobLabel", "selector", "namespaceSelector", "endpoints"}
        assert spec["selector"]["matchLabels"]
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "scheme", "interval", "scrapeTimeout",
                               "relabelings", "metricRelabelings"}
            assert ep["port"] == "admin" and ep["path"] == "/metrics"
            assert re.fullmatch(r"\d+(ms|s|m)", ep["interval"])
    elif kind == "PrometheusRule":
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules"}
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
                assert isinstance(rule["expr"], str) and rule["expr"].strip()
    elif kind == "HTTPRoute":
        assert set(spec) <= {"parentRefs", "hostnames", "rules"}
        assert spec["parentRefs"] and all("name" in p for p in spec["parentRefs"])
        for rule in spec["rules"]:
            assert set(rule) <= {"matches", "backendRefs", "timeouts", "filters"}
            for ref in rule["backendRefs"]:
                assert set(ref) <= {"name", "port", "weight", "kind", "group", "namespace"}
    else:
        raise AssertionError(f"unexpected custom resource {kind}")


# --- the node pod -----------------------------------------------------------

@pytest.mark.parametrize("values_file", VALUE_SETS, ids=ids(VALUE_SETS))
def test_pod_runs_the_node_as_the_cluster_needs(values_file):
    values = load_values(values_file)
    objects = render(values)
    deployment = node_deployment(objects)
    pod = deployment["spec"]["template"]["spec"]
    c = container(objects)
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(values)

    # the client port (WebSocket, health) and the admin port (API, metrics)
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("http", 8000), ("admin", 9000)]
    assert "--listen=0.0.0.0:8000" in c["args"]
    assert "--admin-listen=0.0.0.0:9000" in c["args"]
    assert "--config=/etc/pubmesh/pubmesh.toml" in c["args"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/pubmesh/pubmesh.toml" and mount["readOnly"]

    # node id = pod name (downward API)
    env = env_of(c)
    assert env["PUBMESH_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "secretKeyRef" in env["PUBMESH_API_KEY"]["valueFrom"]
    for name in env:
        assert name.startswith("PUBMESH_"), name

    # probes
    # liveness on the admin port: a client port at --max-connections refuses
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}

    # grace covers preStop + drain with a margin, and the node gets the same drain
    drain = merged["drainSeconds"]
    sleep = merged["preStop"]["sleepSeconds"]
    assert pod["terminationGracePeriodSeconds"] >= sleep + drain + 5
    assert parse_toml(config_toml(objects))["drain_seconds"] == drain
    pre_stop = c["lifecycle"]["preStop"]
    if merged["preStop"]["useSleepAction"]:
        assert pre_stop == {"sleep": {"seconds": sleep}}
    else:
        assert pre_stop == {"exec": {"command": ["/bin/sleep", str(sleep)]}}

    # rolling updates never take capacity away while old pods drain
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0

    # non-root, read-only, no capabilities
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False

    # resources, spreading
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    keys = {t["topologyKey"] for t in pod["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    for t in pod["topologySpreadConstraints"]:
        assert t["labelSelector"]["matchLabels"] == selector
    assert "podAntiAffinity" in pod["affinity"]


def test_services_select_only_node_pods_and_headless_lists_unready_pods():
    objects = render(load_values(VALUES / "redis-internal.yaml"))
    node_selector = node_deployment(objects)["spec"]["selector"]["matchLabels"]
    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    client = services[f"{RELEASE}-pubmesh"]
    headless = services[f"{RELEASE}-pubmesh-headless"]
    assert client["spec"]["selector"] == node_selector
    assert client["spec"]["ports"][0]["port"] == 8000
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"] == node_selector
    redis_pods = [d for d in by_kind(objects, "Deployment") if d is not node_deployment(objects)]
    redis_labels = redis_pods[0]["spec"]["template"]["metadata"]["labels"]
    assert not all(redis_labels.get(k) == v for k, v in node_selector.items())


def test_config_change_rolls_the_pods_and_unrelated_changes_do_not():
    def checksum(values):
        return node_deployment(render(values))["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"]

    base = checksum({})
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum({}) == base
    assert checksum({"config": {"client_rate": 50}}) != base
    assert checksum({"drainSeconds": 20}) != base
    assert checksum({"redis": {"urls": ["redis://r:6379"]}}) != base
    assert checksum({"podLabels": {"team": "rt"}}) == base


def test_new_credentials_roll_the_pods():
    def checksum(values):
        return node_deployment(render(values))["spec"]["template"]["metadata"]["annotations"][
            "checksum/secret"]

    assert checksum({"auth": {"apiKey": "a"}}) != checksum({"auth": {"apiKey": "b"}})


def test_config_file_holds_the_values_in_the_nodes_key_names():
    objects = render(load_values(VALUES / "production.yaml"))
    config = parse_toml(config_toml(objects))
    several = parse_toml(config_toml(render(load_values(VALUES / "redis-several.yaml"))))
    assert several["redis_url"][0].startswith("redis://")
    assert config["redis_prefix"] == "pubmesh"
    assert config["drain_seconds"] == 30
    assert config["max_connections"] == 15000
    assert config["outbox_bytes"] == 1048576
    assert config["client_user_publish"] == "authenticated"
    assert config["namespaces"][0] == {
        "pattern": "chat:*", "history_size": 100, "history_ttl_seconds": 3600,
        "presence": True, "join_leave": True, "subscribe": "authenticated",
    }
    assert config["namespaces"][1]["publish"] == "none"
    # null values are left to the node's defaults; secrets never reach the ConfigMap
    assert "backend_url" not in config and "anonymous_id" not in config
    text = config_toml(objects)
    assert "prod-api-key-from-ci" not in text and "hs256-shared-secret" not in text
    grace = node_deployment(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == 10 + 30 + 10


# --- Redis modes --------------------------------------------------------------

def test_several_redis_urls_keep_their_order():
    objects = render(load_values(VALUES / "redis-several.yaml"))
    config = parse_toml(config_toml(objects))
    assert config["redis_url"] == [
        "redis://redis-a.redis.svc:6379", "redis://redis-b.redis.svc:6379",
        "rediss://redis-c.redis.svc:6380",
    ]
    assert config["redis_prefix"] == "chat-prod"
    assert "redis_cluster" not in config
    assert node_deployment(objects)["spec"]["replicas"] == 3


def test_redis_cluster_uses_sharded_pubsub_and_urls_from_a_secret():
    objects = render(load_values(VALUES / "redis-cluster.yaml"))
    config = parse_toml(config_toml(objects))
    assert config["redis_cluster"] is True
    assert "redis_url" not in config
    env = env_of(container(objects))
    assert env["PUBMESH_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pubmesh-redis", "key": "urls"}
    # credentials from the existing Secret, no chart Secret
    assert by_kind(objects, "Secret") == []
    assert env["PUBMESH_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "pubmesh-credentials", "key": "api"}
    assert "PUBMESH_JWT_SECRET" not in env
    c = container(objects)
    assert "--jwt-public-key=/etc/pubmesh/jwt/public.pem" in c["args"]
    pod = node_deployment(objects)["spec"]["template"]["spec"]
    jwt = next(v for v in pod["volumes"] if v["name"] == "jwt")
    assert jwt["secret"] == {"secretName": "pubmesh-credentials", "items": [{"key": "jwt.pem", "path": "public.pem"}]}


def test_in_chart_redis_is_a_plain_redis_the_nodes_point_at():
    objects = render(load_values(VALUES / "redis-internal.yaml"))
    name = f"{RELEASE}-pubmesh-redis"
    redis = next(d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == name)
    rc = redis["spec"]["template"]["spec"]["containers"][0]
    assert rc["image"].startswith("redis:")
    assert rc["securityContext"]["readOnlyRootFilesystem"] is True
    assert redis["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    svc = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"] == name)
    assert svc["spec"]["ports"][0]["port"] == 6379
    assert svc["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    config = parse_toml(config_toml(objects))
    assert config["redis_url"] == [f"redis://{name}:6379"]


def test_without_redis_the_chart_runs_one_in_memory_node():
    objects = render({})
    config = parse_toml(config_toml(objects))
    assert "redis_url" not in config
    assert node_deployment(objects)["spec"]["replicas"] == 1
    assert "in-memory relay" in render_notes({})


# --- credentials -------------------------------------------------------------

def test_secret_holds_the_given_credentials_or_a_generated_key():
    generated = one(render({}), "Secret")
    import base64

    key = base64.b64decode(generated["data"]["api-key"]).decode()
    assert len(key) == 40 and key.isalnum()
    assert generated["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    objects = render({"auth": {"apiKey": "given-api-key", "jwtSecret": "hs256-shared-secret"}})
    secret = one(objects, "Secret")
    assert base64.b64decode(secret["data"]["api-key"]).decode() == "given-api-key"
    assert base64.b64decode(secret["data"]["jwt-secret"]).decode() == "hs256-shared-secret"
    env = env_of(container(objects))
    assert env["PUBMESH_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "jwt-secret"

    objects = render(load_values(VALUES / "httproute.yaml"))
    secret = one(objects, "Secret")
    assert base64.b64decode(secret["data"]["jwt-public-key.pem"]).decode().startswith("-----BEGIN PUBLIC KEY-----")
    assert "--jwt-public-key=/etc/pubmesh/jwt/public.pem" in container(objects)["args"]


# --- scaling, disruption, exposure -------------------------------------------

def test_hpa_scales_on_cpu_and_connections_per_pod_and_slowly_down():
    objects = render(load_values(VALUES / "production.yaml"))
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == node_deployment(objects)["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 65}
    assert metrics["Pods"]["pods"]["metric"]["name"] == "pubmesh_connections"
    assert metrics["Pods"]["pods"]["target"] == {"type": "AverageValue", "averageValue": "8000"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert "replicas" not in node_deployment(objects)["spec"]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 2, "selector": node_deployment(objects)["spec"]["selector"]}


def test_production_values_take_every_secret_from_existing_secrets():
    values = load_values(VALUES / "production.yaml")
    assert not any(values["auth"].get(k) for k in ("apiKey", "jwtSecret", "jwtPublicKey"))
    assert "urls" not in values["redis"]
    objects = render(values)
    assert by_kind(objects, "Secret") == []
    env = env_of(container(objects))
    for name, key in [("PUBMESH_API_KEY", "api-key"), ("PUBMESH_JWT_SECRET", "jwt-secret")]:
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "pubmesh-credentials", "key": key}
    assert env["PUBMESH_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pubmesh-redis", "key": "redis-urls"}
    assert "redis_url" not in parse_toml(config_toml(objects))


@pytest.mark.parametrize("values", [
    {"ingress": {"enabled": True}, "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}},
    load_values(VALUES / "production.yaml"),
    load_values(VALUES / "httproute.yaml"),
], ids=["defaults", "production", "httproute"])
def test_public_routes_reach_only_client_endpoints(values):
    """Ingress and HTTPRoute reach the client Service, whose only port is the
    node's --listen port; the API and /metrics are on --admin-listen, which only
    the ClusterIP admin Service and the headless Service expose."""
    objects = render(values)
    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    client = services[f"{RELEASE}-pubmesh"]
    admin = services[f"{RELEASE}-pubmesh-admin"]
    assert [(p["name"], p["targetPort"]) for p in client["spec"]["ports"]] == [("http", "http")]
    assert [(p["name"], p["targetPort"]) for p in admin["spec"]["ports"]] == [("admin", "admin")]
    assert admin["spec"]["type"] == "ClusterIP"
    c = container(objects)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert f"--listen=0.0.0.0:{ports['http']}" in c["args"]
    assert f"--admin-listen=0.0.0.0:{ports['admin']}" in c["args"]
    assert ports["http"] != ports["admin"]
    routed = 0
    for ingress in by_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"] == {"name": client["metadata"]["name"], "port": {"name": "http"}}
                assert not path["path"].startswith(("/api", "/metrics"))
                routed += 1
    for route in by_kind(objects, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                assert ref == {"name": client["metadata"]["name"], "port": client["spec"]["ports"][0]["port"]}
                routed += 1
    assert routed > 0
    if "ingress" in values and values["ingress"].get("hosts") is None:
        # the default Ingress routes the WebSocket endpoint only
        paths = [p for i in by_kind(objects, "Ingress") for r in i["spec"]["rules"] for p in r["http"]["paths"]]
        assert [(p["path"], p["pathType"]) for p in paths] == [("/websocket", "Exact")]


def test_ingress_keeps_websockets_open():
    ingress = one(render(load_values(VALUES / "production.yaml")), "Ingress")
    ann = ingress["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
    assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "7200"
    assert ann["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-pubmesh", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["hosts"] == ["ws.example.com"]
    notes = render_notes(load_values(VALUES / "production.yaml"))
    assert "wss://ws.example.com/websocket" in notes


def test_httproute_sends_traffic_to_the_client_service():
    objects = render(load_values(VALUES / "httproute.yaml"))
    route = one(objects, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}]
    assert route["spec"]["hostnames"] == ["ws.example.com"]
    rule = route["spec"]["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/websocket"}}]
    assert rule["backendRefs"] == [{"name": f"{RELEASE}-pubmesh", "port": 8000}]
    assert rule["timeouts"] == {"request": "0s"}
    assert by_kind(objects, "Ingress") == []
    anti = node_deployment(objects)["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in anti


# --- monitoring ---------------------------------------------------------------

def test_service_monitor_scrapes_every_pod_through_the_headless_service():
    objects = render(load_values(VALUES / "production.yaml"))
    sm = one(objects, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    headless = next(s for s in by_kind(objects, "Service") if s["spec"].get("clusterIP") == "None")
    client = next(s for s in by_kind(objects, "Service") if s["spec"].get("clusterIP") != "None")
    selects = lambda svc: all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())  # noqa: E731
    assert selects(headless) and not selects(client)
    # job="pubmesh", which the alerts and dashboards select
    assert headless["metadata"]["labels"][sm["spec"]["jobLabel"]] == "pubmesh"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_prometheus_rule_is_the_alerts_file():
    assert (CHART / "files" / "alerts.yml").read_bytes() == ALERTS.read_bytes(), (
        "helm/pubmesh/files/alerts.yml differs from deploy/prometheus/alerts.yml; run: "
        "cp deploy/prometheus/alerts.yml helm/pubmesh/files/alerts.yml")
    rule = one(render(load_values(VALUES / "production.yaml")), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap_is_the_dashboard_files_for_the_grafana_sidecar():
    for path in DASHBOARDS.glob("*.json"):
        copy_ = CHART / "files" / "dashboards" / path.name
        assert copy_.exists() and copy_.read_bytes() == path.read_bytes(), (
            f"helm/pubmesh/files/dashboards/{path.name} differs from deploy/grafana/dashboards/"
            f"{path.name}; run: cp deploy/grafana/dashboards/*.json helm/pubmesh/files/dashboards/")
    assert sorted(p.name for p in (CHART / "files" / "dashboards").glob("*.json")) == sorted(
        p.name for p in DASHBOARDS.glob("*.json"))
    objects = render(load_values(VALUES / "production.yaml"))
    cm = next(c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("-dashboards"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "pubmesh"}
    assert set(cm["data"]) == {p.name for p in DASHBOARDS.glob("*.json")}
    for name, text in cm["data"].items():
        assert text == (DASHBOARDS / name).read_text().rstrip("\n")


def test_monitoring_objects_are_off_by_default():
    kinds = {o["kind"] for o in render({})}
    assert kinds.isdisjoint({"ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler", "Ingress", "HTTPRoute"})
    assert not any(c["metadata"]["name"].endswith("-dashboards") for c in by_kind(render({}), "ConfigMap"))


# --- docs ---------------------------------------------------------------------

def leaf_keys(values: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in {"behavior", "resources", "podSecurityContext", "securityContext", "labels", "updateStrategy"}:
            keys += leaf_keys(value, path + ".")
        else:
            keys.append(path)
    return keys


def test_readme_values_table_lists_every_value():
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [k for k in leaf_keys(defaults) if k not in documented]
    assert missing == [], f"values missing from helm/pubmesh/README.md: {missing}"
    unknown = [k for k in documented if k not in set(leaf_keys(defaults))]
    assert unknown == [], f"README documents values that do not exist: {unknown}"


# --- the real node accepts what the chart gives it ----------------------------

def pubmesh_bin() -> Path:
    path = Path(os.environ.get("PUBMESH_BIN", REPO / "target" / "debug" / "pubmesh"))
    if not path.exists():
        pytest.fail(f"pubmesh binary not found at {path}: run `cargo build --bin pubmesh` "
                    "or set PUBMESH_BIN", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline_s: float, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return -1
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {deadline_s}s: {last}")


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=ids(VALUE_SETS))
def test_the_node_starts_with_the_rendered_config_args_and_env(values_file, tmp_path):
    """Run the real binary with the pod's args, env and files: the config file,
    flags and PUBMESH_* variables must all be ones the node understands."""
    values = load_values(values_file)
    objects = render(values)
    c = container(objects)
    pod_name = f"{node_deployment(objects)['metadata']['name']}-5d8f7c9b6d-x2k4q"
    port, admin_port = free_port(), free_port()
    config = tmp_path / "pubmesh.toml"
    # Redis names of the values files do not resolve here: point them at a
    # closed local port. The node must still start and answer /livez.
    toml = re.sub(r'rediss?://[^"]+', "redis://127.0.0.1:1", config_toml(objects))
    config.write_text(toml)
    jwt = tmp_path / "public.pem"
    secret_values = {"PUBMESH_API_KEY": "test-key", "PUBMESH_JWT_SECRET": "s3cret",
                     "PUBMESH_REDIS_URL": "redis://127.0.0.1:1"}
    args = []
    for arg in c["args"]:
        arg = arg.replace("/etc/pubmesh/pubmesh.toml", str(config))
        arg = arg.replace("0.0.0.0:8000", f"127.0.0.1:{port}")
        arg = arg.replace("0.0.0.0:9000", f"127.0.0.1:{admin_port}")
        arg = arg.replace("/etc/pubmesh/jwt/public.pem", str(jwt))
        args.append(arg)
    if any(str(jwt) in a for a in args):
        # the mounted Secret key: a real EC P-256 public key
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
                        str(tmp_path / "k.pem")], check=True, capture_output=True)
        subprocess.run(["openssl", "ec", "-in", str(tmp_path / "k.pem"), "-pubout", "-out", str(jwt)],
                       check=True, capture_output=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for e in c["env"]:
        if e["name"] == "PUBMESH_NODE_ID":
            env[e["name"]] = pod_name
        elif "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = secret_values[e["name"]]
    log = tmp_path / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(pubmesh_bin()), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        status = wait_http(f"http://127.0.0.1:{port}/livez", 20, proc)
        assert status == 200, f"node exited or failed: {log.read_text()[-2000:]}"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=2) as r:
            metrics = r.read().decode()
        assert f'pubmesh_info{{node_id="{pod_name}"' in metrics, metrics[:500]
        req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/api/nodes",
                                     headers={"X-API-Key": "test-key"})
        with urllib.request.urlopen(req, timeout=2) as r:
            assert r.status == 200
        # the client port does not serve the API or the metrics
        for path in ("/api/nodes", "/metrics"):
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-API-Key": "test-key"})
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=2)
            assert err.value.code == 404
    finally:
        # SIGKILL: a SIGTERM would make the node drain for drain_seconds.
        proc.kill()
        proc.wait()


def test_every_value_in_values_yaml_has_a_comment():
    lines = (CHART / "values.yaml").read_text().splitlines()
    defaults = yaml.safe_load("\n".join(lines))
    described, stack, block = set(), [], []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        m = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):", line)
        if m:
            stack = stack[: len(m.group(1)) // 2] + [m.group(2)]
            if any(c.startswith("# -- ") for c in block):
                described.add(".".join(stack))
        block = []
    missing = [k for k in leaf_keys(defaults) if k not in described]
    assert missing == [], f"values.yaml keys without a '# --' comment: {missing}"
