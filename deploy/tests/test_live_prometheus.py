"""A real Prometheus scraping a real local 3-node cluster.

Runs only with PUBMESH_LIVE_PROM=1 (conftest.py does not collect this file
otherwise). It starts its own redis-server, three pubmesh nodes (PUBMESH_BIN or
target/debug/pubmesh) and /usr/bin/prometheus on free loopback ports, applies a
little load (WebSocket clients, server API notifies, a bad frame, a slow
consumer, a short Redis outage), then evaluates every PromQL expression of the
dashboards and alert rules through Prometheus's HTTP API:

- every dashboard expression returns data;
- every alert expression evaluates without error, and Prometheus reports every
  rule healthy;
- every metric name they use is served by some node's /metrics.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from websockets.asyncio.client import connect

from conftest import ALERTS, alert_rules, dashboard_targets, dashboards, metric_names
from test_chart import pubmesh_bin

API_KEY = "live-test-key"
PATIENCE_S = 45.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(check, what: str, patience: float = PATIENCE_S, every: float = 0.2):
    """Poll `check` until it returns a truthy value; fail after `patience` seconds."""
    deadline = time.monotonic() + patience
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError, KeyError, urllib.error.URLError) as e:
            last_error = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last error: {last_error}")


def http_get(url: str, timeout: float = 3) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def api_post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def metric_value(text: str, name: str) -> float:
    """Sum of a metric's series, or the value of one full `name{labels}` series."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or ("{" not in name and line.startswith(name + "{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def served_names(text: str) -> set[str]:
    names = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M))
    names |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, flags=re.M))
    return names


class Cluster:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_port = free_port()
        self.node_ports = [free_port() for _ in range(3)]
        self.prom_port = free_port()
        self.exporter_port = free_port()

    def spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def start_redis(self) -> None:
        self.spawn("redis", [shutil.which("redis-server") or "redis-server", "--port", str(self.redis_port),
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])

        def pong():
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        eventually(pong, "redis-server")

    def stop_redis(self) -> None:
        proc = self.procs.pop("redis")
        proc.kill()
        proc.wait()

    def start(self) -> None:
        if not shutil.which("redis-server"):
            pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)
        if not Path("/usr/bin/prometheus").exists():
            pytest.fail("/usr/bin/prometheus is missing (apt-get install prometheus)", pytrace=False)
        self.start_redis()
        for i, port in enumerate(self.node_ports, 1):
            self.spawn(f"node{i}", [
                str(pubmesh_bin()), "--listen", f"127.0.0.1:{port}", "--node-id", f"live{i}",
                "--api-key", API_KEY, "--redis-url", f"redis://127.0.0.1:{self.redis_port}",
                "--drain-seconds", "1", "--outbox-bytes", "65536", "--relay-retry-ms", "1000"])
        for port in self.node_ports:
            eventually(lambda p=port: "true" in http_get(f"http://127.0.0.1:{p}/readyz"), f"node :{port} ready")
        # redis_exporter (Debian's prometheus-redis-exporter) for the Redis panels and alerts.
        exporter = shutil.which("prometheus-redis-exporter") or shutil.which("redis_exporter")
        if exporter is None:
            pytest.fail("redis_exporter is missing (apt-get install prometheus-redis-exporter)", pytrace=False)
        self.spawn("redis-exporter", [exporter, f"-redis.addr=redis://127.0.0.1:{self.redis_port}",
                                      f"-web.listen-address=127.0.0.1:{self.exporter_port}"])
        eventually(lambda: "redis_up 1" in http_get(f"http://127.0.0.1:{self.exporter_port}/metrics"),
                   "redis_exporter reaches Redis")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{
                "job_name": "pubmesh", "scrape_interval": "1s",
                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in self.node_ports]}],
            }, {
                "job_name": "redis", "scrape_interval": "1s",
                "static_configs": [{"targets": [f"127.0.0.1:{self.exporter_port}"]}],
            }],
        }
        (self.tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.spawn("prometheus", [
            "/usr/bin/prometheus", f"--config.file={self.tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.prom_port}"])
        eventually(lambda: "Ready" in http_get(f"http://127.0.0.1:{self.prom_port}/-/ready"), "prometheus ready")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        for proc in self.procs.values():
            proc.wait()

    def metrics(self, port: int) -> str:
        return http_get(f"http://127.0.0.1:{port}/metrics")

    def query(self, expr: str) -> dict:
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            return json.loads(http_get(url, timeout=10))
        except urllib.error.HTTPError as e:
            return json.loads(e.read())


async def websocket_load(ports: list[int]) -> None:
    """Members of one channel on every node publish to it; a bad frame; closes."""
    sockets = []
    for port in ports:
        for _ in range(3):
            ws = await connect(f"ws://127.0.0.1:{port}/websocket?channel_id=live-room")
            hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert hello["type"] == "connection"
            sockets.append(ws)
    await sockets[0].send(json.dumps({"type": "subscribe", "channel_ids": ["news"], "ref": 1}))
    for round_ in range(20):
        for ws in sockets[:: 3]:  # one publisher per node
            await ws.send(json.dumps({"type": "channel", "channel_ids": ["live-room"],
                                      "data": {"type": "chat", "data": {"n": round_}}}))
        await asyncio.sleep(0.05)
    for ws in sockets[1:: 3]:  # pubmesh_errors_total{code="bad_json"} on every node
        await ws.send("this is not json")

    async def drain(ws):
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 0.5)
        except (asyncio.TimeoutError, Exception):
            return

    await asyncio.gather(*(drain(ws) for ws in sockets))
    for ws in sockets:
        await ws.close()


def slow_consumer(port: int, cluster: Cluster) -> None:
    """A socket that never reads, with a tiny receive buffer, until the node
    closes it for overflowing --outbox-bytes."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /websocket?channel_id=slow-room HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    blob = "x" * 30000
    try:
        def overflowed():
            for _ in range(20):
                api_post(port, "/api/notify/channels",
                         {"channel_ids": ["slow-room"], "data": {"type": "bulk", "data": {"blob": blob}}, "local": True})
            return metric_value(cluster.metrics(port), "pubmesh_slow_consumer_disconnects_total") >= 1

        eventually(overflowed, "a slow-consumer disconnect")
    finally:
        s.close()


def redis_outage(cluster: Cluster) -> None:
    """Stop Redis, publish cross-node until the relay counts drops, restart it."""
    cluster.stop_redis()
    port = cluster.node_ports[0]

    def dropped():
        # The API answers once the relay's outcome is known: after the retry
        # window (`--relay-retry-ms`) while Redis is down, so a slow or failed
        # reply is expected here; the metric is what this waits for.
        try:
            api_post(port, "/api/notify/channels", {"channel_ids": ["live-room"], "data": {"type": "x", "data": {}}})
        except (urllib.error.URLError, OSError):
            pass
        # Every labelled series exists at zero from the start: wait for the count.
        return metric_value(cluster.metrics(port), 'pubmesh_relay_dropped_total{reason="redis_down"}') > 0

    eventually(dropped, "pubmesh_relay_dropped_total{reason=\"redis_down\"} > 0 while Redis is down")
    cluster.start_redis()
    for p in cluster.node_ports:
        eventually(lambda p=p: metric_value(cluster.metrics(p), "pubmesh_relay_up") == 1, f"relay up again on :{p}")


@pytest.fixture(scope="module")
def loaded_cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("live-prom"))
    try:
        cluster.start()
        asyncio.run(websocket_load(cluster.node_ports))
        for port in cluster.node_ports:
            api_post(port, "/api/notify/channels", {"channel_ids": ["live-room"], "data": {"type": "api", "data": {}}})
            api_post(port, "/api/notify/users", {"root_ids": ["u-1"], "data": {"type": "api", "data": {}}})
            api_post(port, "/api/broadcast", {"data": {"type": "api", "data": {}}})
        slow_consumer(cluster.node_ports[1], cluster)
        redis_outage(cluster)
        yield cluster
    finally:
        cluster.stop()


def grafana_expr(expr: str, node_instance: str) -> str:
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
            .replace("$redis_job", "redis").replace("$job", "pubmesh").replace("$node", node_instance))


def test_every_dashboard_expression_returns_data(loaded_cluster):
    node = f"127.0.0.1:{loaded_cluster.node_ports[1]}"
    exprs = [(name, title, grafana_expr(expr, node))
             for name, board in dashboards().items() for title, expr in dashboard_targets(board)]
    missing = []
    for name, title, expr in exprs:
        def has_data(expr=expr):
            answer = loaded_cluster.query(expr)
            assert answer["status"] == "success", (expr, answer)
            return answer["data"]["result"]
        try:
            eventually(has_data, f"data for {expr}", patience=20, every=0.5)
        except AssertionError:
            missing.append(f"{name} / {title}: {expr}")
    assert missing == [], "expressions without data:\n" + "\n".join(missing)


def test_the_node_variable_lists_every_node(loaded_cluster):
    board = dashboards()["pubmesh-node.json"]
    var = next(v for v in board["templating"]["list"] if v["name"] == "node")
    inner = re.fullmatch(r"query_result\((.*)\)", var["query"]["query"]).group(1)
    answer = loaded_cluster.query(grafana_expr(inner, ""))
    regex = re.compile(var["regex"].strip("/").replace("(?<", "(?P<"))
    found = {}
    for series in answer["data"]["result"]:
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(series["metric"].items()) if k != "__name__")
        m = regex.search(f"pubmesh_info{{{labels}}} 1")
        found[m.group("value")] = m.group("text")
    assert found == {f"127.0.0.1:{p}": f"live{i}" for i, p in enumerate(loaded_cluster.node_ports, 1)}


def test_every_alert_expression_evaluates_and_every_rule_is_healthy(loaded_cluster):
    for rule in alert_rules():
        answer = loaded_cluster.query(rule["expr"])
        assert answer["status"] == "success", (rule["alert"], answer)

    def all_rules_evaluated_ok():
        groups = json.loads(http_get(f"http://127.0.0.1:{loaded_cluster.prom_port}/api/v1/rules"))["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not bad, bad
        return True

    eventually(all_rules_evaluated_ok, "every alert rule evaluated")


def test_healthy_cluster_fires_no_node_down_alert(loaded_cluster):
    answer = loaded_cluster.query('up{job="pubmesh"} == 0')
    assert answer["data"]["result"] == []
    assert len(loaded_cluster.query('up{job="pubmesh"} == 1')["data"]["result"]) == 3


def test_every_metric_the_dashboards_and_alerts_use_is_served(loaded_cluster):
    used = set()
    for board in dashboards().values():
        for _, expr in dashboard_targets(board):
            used |= metric_names(expr)
    for rule in alert_rules():
        used |= metric_names(rule["expr"])
    served = set()
    for port in loaded_cluster.node_ports:
        served |= served_names(loaded_cluster.metrics(port))
    served |= served_names(http_get(f"http://127.0.0.1:{loaded_cluster.exporter_port}/metrics"))
    assert sorted(used - served) == []
