"""Shared code for the deploy tests: paths, the chart renderer, promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "pubmesh"
DEPLOY = REPO / "deploy"
VALUES = Path(__file__).resolve().parent / "values"
BAD_VALUES = Path(__file__).resolve().parent / "values-bad"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"

RELEASE = "demo"
NAMESPACE = "pubmesh"

# The node's metric names (docs/cluster.md, README metrics table). Dashboards
# and alerts may use only these (plus Prometheus's own `up`).
NODE_METRICS = {
    "pubmesh_info", "pubmesh_connections", "pubmesh_connections_accepted_total",
    "pubmesh_connections_closed_total", "pubmesh_subscriptions", "pubmesh_channels",
    "pubmesh_users", "pubmesh_messages_in_total", "pubmesh_messages_out_total",
    "pubmesh_deliveries_total", "pubmesh_dropped_total", "pubmesh_slow_consumer_disconnects_total",
    "pubmesh_errors_total", "pubmesh_api_request_duration_seconds",
    "pubmesh_fanout_duration_seconds", "pubmesh_open_files_limit", "pubmesh_draining",
    "pubmesh_ready", "pubmesh_relay_up", "pubmesh_relay_published_total",
    "pubmesh_relay_received_total", "pubmesh_relay_pipeline_depth",
    "pubmesh_relay_roundtrip_seconds", "pubmesh_cross_node_latency_seconds",
    "pubmesh_relay_subscriptions", "pubmesh_relay_resubscribes_total",
    "pubmesh_relay_subscriber_reconnects_total",
    "pubmesh_relay_dropped_total", "pubmesh_relay_peers",
    "pubmesh_history_appends_total", "pubmesh_history_reads_total", "pubmesh_recoveries_total",
    "pubmesh_presence_entries", "pubmesh_http_connections", "pubmesh_http_refused_total",
    "pubmesh_http_timeouts_total",
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
    "process_open_fds", "process_max_fds", "process_start_time_seconds",
}
# redis_exporter's metrics the Redis panels and alerts read (job="redis").
REDIS_EXPORTER_METRICS = {
    "redis_up", "redis_connected_clients", "redis_memory_used_bytes", "redis_memory_max_bytes",
    "redis_commands_processed_total", "redis_pubsub_channels", "redis_net_input_bytes_total",
    "redis_net_output_bytes_total",
}
HISTOGRAMS = {
    "pubmesh_api_request_duration_seconds", "pubmesh_fanout_duration_seconds",
    "pubmesh_relay_roundtrip_seconds", "pubmesh_cross_node_latency_seconds",
}

_METRIC_RE = re.compile(r"(?<!\$)\b((?:pubmesh|process|redis)_[a-z0-9_]+)")


def metric_names(expr: str) -> set[str]:
    """Base metric names an expression reads (histogram suffixes stripped)."""
    names = set()
    for name in _METRIC_RE.findall(expr):
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)] if name.endswith(suffix) else None
            if base in HISTOGRAMS:
                name = base
                break
        names.add(name)
    return names


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict | None = None, name: str = RELEASE) -> list[dict]:
    """Render the chart with the real Helm engine and parse every object."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=name, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                objects.append(doc)
    return objects


def render_notes(values: dict | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def node_deployment(objects: list[dict]) -> dict:
    deps = [
        d for d in by_kind(objects, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "node"
    ]
    assert len(deps) == 1
    return deps[0]


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_targets(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in a dashboard, rows included."""
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((panel.get("title", ""), target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return out


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed. It comes with Debian's prometheus package: "
            "apt-get update && apt-get install -y prometheus (./scripts/test does this).",
            pytrace=False,
        )
    return path


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


# The live Prometheus test needs a built node, redis-server and a Prometheus
# server and takes about a minute: it runs only when asked for.
collect_ignore = [] if os.environ.get("PUBMESH_LIVE_PROM") == "1" else ["test_live_prometheus.py"]
# The container tests need root, podman, runc and debootstrap, and build an
# image (./scripts/test installs them and sets PUBMESH_CONTAINER_TESTS=1).
if os.environ.get("PUBMESH_CONTAINER_TESTS") != "1":
    collect_ignore.append("test_container.py")
