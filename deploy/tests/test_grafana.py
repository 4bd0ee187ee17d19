"""The Grafana dashboards: structure, variables, and every PromQL expression
parsed by promtool."""

from __future__ import annotations

import re

import yaml

from conftest import NODE_METRICS, REDIS_EXPORTER_METRICS, dashboard_targets, dashboards, metric_names, run

# What Grafana substitutes before a query reaches Prometheus.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$job": "pubmesh",
    "$node": "127.0.0.1:8001",
    "$redis_job": "redis",
}


def substitute(expr: str) -> str:
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def all_panels(dashboard):
    out = []

    def walk(panels):
        for panel in panels:
            out.append(panel)
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return out


def test_there_are_an_overview_and_a_node_dashboard():
    boards = dashboards()
    assert set(boards) == {"pubmesh-overview.json", "pubmesh-node.json"}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids) and all(len(u) <= 40 for u in uids)


def test_every_query_goes_through_the_datasource_variable():
    for name, board in dashboards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        ds = variables["datasource"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus", name
        for panel in all_panels(board):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", (name, panel["title"])
        for var in variables.values():
            if var["type"] == "query":
                assert var["datasource"]["uid"] == "${datasource}", (name, var["name"])


def test_panels_have_unique_ids_and_fit_the_grid():
    for name, board in dashboards().items():
        ids = [p["id"] for p in all_panels(board)]
        assert len(ids) == len(set(ids)), name
        for panel in all_panels(board):
            pos = panel["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, (name, panel["title"])


def test_overview_covers_the_cluster():
    board = dashboards()["pubmesh-overview.json"]
    titles = " | ".join(p["title"].lower() for p in all_panels(board))
    for topic in ["nodes up", "connections", "subscriptions", "deliveries/s", "relay published",
                  "relay received", "cross-node latency", "errors", "slow-consumer"]:
        assert topic in titles, topic
    heatmaps = [p for p in all_panels(board) if p["type"] == "heatmap"]
    assert heatmaps and all(t["format"] == "heatmap" for p in heatmaps for t in p["targets"])
    assert all("pubmesh_cross_node_latency_seconds_bucket" in t["expr"] for p in heatmaps for t in p["targets"])


def test_node_dashboard_filters_every_query_by_the_node_variable():
    board = dashboards()["pubmesh-node.json"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    node = variables["node"]
    assert node["type"] == "query" and "pubmesh_info" in node["query"]["query"]
    # values are scrape instances, shown by node id
    # Grafana (JavaScript) writes named groups as (?<name>...), Python as (?P<name>...)
    regex = re.compile(node["regex"].strip("/").replace("(?<", "(?P<"))
    sample = 'pubmesh_info{instance="10.0.0.7:8000", job="pubmesh", node_id="rt-pubmesh-6c9-x2", version="0.1.0"} 1'
    match = regex.search(sample)
    assert match.group("value") == "10.0.0.7:8000" and match.group("text") == "rt-pubmesh-6c9-x2"
    for title, expr in dashboard_targets(board):
        assert 'instance="$node"' in expr, (title, expr)


def test_dashboards_use_only_the_nodes_metric_names():
    for name, board in dashboards().items():
        for title, expr in dashboard_targets(board):
            unknown = metric_names(expr) - NODE_METRICS - REDIS_EXPORTER_METRICS
            assert not unknown, (name, title, unknown)


def test_every_dashboard_expression_is_valid_promql(promtool, tmp_path):
    """promtool parses each expression as a recording rule."""
    rules = []
    for name, board in dashboards().items():
        for i, (title, expr) in enumerate(dashboard_targets(board)):
            rules.append({"record": f"dashboard:{name.split('.')[0].replace('-', '_')}:{i}",
                          "expr": substitute(expr)})
    path = tmp_path / "dashboard_exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
