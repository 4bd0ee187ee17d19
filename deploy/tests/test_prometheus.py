"""The Prometheus config and alert rules: promtool check config, check rules,
and the rule unit tests in deploy/prometheus/tests/."""

from __future__ import annotations

import re

import yaml

from conftest import ALERTS, DEPLOY, NODE_METRICS, REDIS_EXPORTER_METRICS, alert_rules, metric_names, run

PROM_DIR = DEPLOY / "prometheus"


def test_promtool_accepts_the_local_prometheus_config(promtool):
    result = run([promtool, "check", "config", "prometheus.yml"], cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_local_config_scrapes_the_three_local_nodes_as_job_pubmesh():
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "pubmesh")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == ["alerts.yml"]


def test_promtool_accepts_the_alert_rules(promtool):
    result = run([promtool, "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    count = int(re.search(r"SUCCESS: (\d+) rules found", result.stdout).group(1))
    assert count == len(alert_rules())


def test_alert_rule_unit_tests_pass(promtool):
    tests = sorted((PROM_DIR / "tests").glob("*.yml"))
    assert tests
    result = run([promtool, "test", "rules", *map(str, tests)], cwd=PROM_DIR / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout


def test_every_alert_is_unit_tested_and_documented():
    tested = set()
    for path in (PROM_DIR / "tests").glob("*.yml"):
        doc = yaml.safe_load(path.read_text())
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    for rule in alert_rules():
        name = rule["alert"]
        assert name in tested, f"{name} has no promtool test where it fires"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_the_required_alerts_exist():
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert "up{" in exprs["PubmeshNodeDown"]
    assert "pubmesh_relay_up" in exprs["PubmeshRelayDegraded"] and "== 0" in exprs["PubmeshRelayDegraded"]
    assert "pubmesh_slow_consumer_disconnects_total" in exprs["PubmeshSlowConsumerDisconnects"]
    assert "pubmesh_errors_total" in exprs["PubmeshHighErrorRate"]
    assert "histogram_quantile(0.99" in exprs["PubmeshCrossNodeLatencyHigh"]
    assert "pubmesh_open_files_limit" in exprs["PubmeshConnectionSaturation"]


def test_alerts_use_only_the_nodes_metric_names():
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - NODE_METRICS - REDIS_EXPORTER_METRICS
        assert not unknown, f"{rule['alert']} uses unknown metrics {unknown}"
