"""The container image recipe and the compose stack (Docker is not run here:
these check the files' structure and what they hand to the node and Prometheus)."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from conftest import CHART, DEPLOY, REPO, run
from test_chart import pubmesh_bin

DOCKER = DEPLOY / "docker"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_dockerfile_builds_in_rust_and_runs_as_non_root_in_a_slim_image():
    text = (DOCKER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    stages = [(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image), name)
              for image, name in re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M)]
    assert len(stages) >= 2
    # a pinned Rust image (full version), a minimal runtime chosen by build args
    assert re.fullmatch(r"rust:\d+\.\d+\.\d+-\S+", stages[0][0]) and stages[0][1] == "builder"
    assert "slim" in stages[-1][0] or "distroless" in stages[-1][0]
    assert stages[-1][1] == "runtime" and "${RUNTIME_IMAGE}" in text
    assert "cargo build --release --locked --bin pubmesh" in text
    # the shipped binary has no debug info; it is kept apart
    assert "objcopy --only-keep-debug" in text and "objcopy --strip-debug" in text
    runtime = text[text.rindex("\nFROM "):]
    user = re.search(r"^USER\s+(\d+)(?::(\d+))?", runtime, flags=re.M)
    assert user and int(user.group(1)) != 0
    # the chart's pod security context runs as the same user
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(user.group(1))
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/pubmesh"\]', runtime, flags=re.M)
    assert "EXPOSE 8000" in runtime and "PUBMESH_LISTEN=0.0.0.0:8000" in runtime
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert "target" in ignore and ".git" in ignore


def test_compose_runs_three_nodes_redis_prometheus_and_grafana():
    services = compose()["services"]
    assert set(services) == {"redis", "node1", "node2", "node3", "prometheus", "grafana"}
    for i in (1, 2, 3):
        node = services[f"node{i}"]
        env = node["environment"]
        assert env["PUBMESH_NODE_ID"] == f"node{i}"
        assert env["PUBMESH_REDIS_URL"] == "redis://redis:6379"
        assert env["PUBMESH_LISTEN"] == "0.0.0.0:8000"
        assert node["ports"] == [f"127.0.0.1:800{i}:8000", f"127.0.0.1:900{i}:9000"]
        assert node["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert (DOCKER / node["build"]["context"]).resolve() == REPO
        assert node["read_only"] is True and node["cap_drop"] == ["ALL"]
        grace = int(node["stop_grace_period"].rstrip("s"))
        assert grace > int(env["PUBMESH_DRAIN_SECONDS"])
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_compose_serves_the_api_and_metrics_on_an_admin_port_as_the_chart_does():
    """The client port carries WebSocket and health only; the server API and
    /metrics are on --admin-listen, published apart and scraped there."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    admin_port = values["adminPort"]
    services = compose()["services"]
    for i in (1, 2, 3):
        node = services[f"node{i}"]
        env = node["environment"]
        listen_port = int(env["PUBMESH_LISTEN"].rsplit(":", 1)[1])
        assert env["PUBMESH_ADMIN_LISTEN"] == f"0.0.0.0:{admin_port}"
        assert admin_port != listen_port
        published = {p.rsplit(":", 1)[1]: p for p in node["ports"]}
        assert set(published) == {str(listen_port), str(admin_port)}, node["ports"]
        assert published[str(admin_port)].startswith("127.0.0.1:")
    scrape = yaml.safe_load((DOCKER / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == [f"node{i}:{admin_port}" for i in (1, 2, 3)]


def test_compose_env_names_are_flags_the_node_knows():
    help_text = subprocess.run([str(pubmesh_bin()), "--help"], capture_output=True, text=True,
                               check=True).stdout
    for name in ("node1", "node2", "node3"):
        for var in compose()["services"][name]["environment"]:
            flag = "--" + var.removeprefix("PUBMESH_").lower().replace("_", "-")
            assert var.startswith("PUBMESH_") and flag in help_text, var
            assert f"[env: {var}" in help_text, var


def test_compose_mounts_exist():
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), (name, source)


def test_compose_prometheus_config_is_valid_with_the_alerts_next_to_it(promtool, tmp_path):
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose()["services"]["prometheus"]["volumes"]}
    # lay the files out as the container sees them
    for target, source in mounts.items():
        dest = tmp_path / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DOCKER / source, dest)
    config = tmp_path / "etc/prometheus/prometheus.yml"
    result = run([promtool, "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    scraped = yaml.safe_load(config.read_text())["scrape_configs"][0]
    assert scraped["job_name"] == "pubmesh"
    assert scraped["static_configs"][0]["targets"] == ["node1:9000", "node2:9000", "node3:9000"]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards():
    grafana = compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    provisioning = DOCKER / mounts["/etc/grafana/provisioning"]
    ds = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "pubmesh.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert path in mounts and (DOCKER / mounts[path]).resolve() == (DEPLOY / "grafana" / "dashboards")
