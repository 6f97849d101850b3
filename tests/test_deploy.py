"""deploy/: alert rules unit-tested with promtool, dashboards and rules only use metrics the
code defines, compose commands parse with the real CLI, the Helm chart ships the same rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor import metrics
from workers.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; CI has it)"
)


def defined_metric_names() -> set[str]:
    """Every sample name the code can expose (counters with _total, histogram series...)."""
    reg = CollectorRegistry()
    for name in dir(metrics):
        cls = getattr(metrics, name)
        if isinstance(cls, type) and name.endswith("Metrics"):
            cls(reg)
    names: set[str] = set()
    for collector in list(reg._collector_to_names):  # private, but the only full listing
        names.update(reg._collector_to_names[collector])
    return names


def dashboard_exprs() -> list[str]:
    out = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            out += [t["expr"] for t in panel["targets"]]
    return out


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def referenced_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\brestrav_[a-z0-9_]+", expr))


@needs_promtool
def test_alert_rules_pass_promtool_unit_tests() -> None:
    d = DEPLOY / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"],
                 ["check", "config", "prometheus.yml"]):
        proc = subprocess.run([PROMTOOL, *args], cwd=d, capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    exprs = [e.replace("$stream", ".*") for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dash", "rules": [
        {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    f = tmp_path / "dash_rules.yml"
    f.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([PROMTOOL, "check", "rules", str(f)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboards_and_alerts_only_use_defined_metrics() -> None:
    defined = defined_metric_names()
    used: set[str] = set()
    for e in dashboard_exprs() + alert_exprs():
        used |= referenced_metrics(e)
    assert used, "no restrav_ metric referenced"
    missing = sorted(used - defined)
    assert not missing, f"referenced but not defined in monitor/metrics.py: {missing}"


def test_dashboards_are_well_formed() -> None:
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), path.name
        assert dash["uid"] and dash["title"].startswith("restrav-monitor")
        for p in dash["panels"]:
            assert p["datasource"]["uid"] == "prometheus" and p["targets"], (path.name, p["title"])


def test_compose_commands_parse_with_the_real_cli() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    parser = build_parser()
    commands = {name: svc["command"] for name, svc in compose["services"].items()
                if svc.get("image", "").startswith("restrav") or "build" in svc}
    assert set(commands) == {"serve", "serve-2", "worker"}  # two serve replicas share streams
    for name, argv in commands.items():
        args = parser.parse_args(argv)
        assert args.command == name.partition("-")[0]
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), src
    dockerfile = compose["services"]["serve"]["build"]["dockerfile"]
    assert (DEPLOY.parent / dockerfile).is_file()


def test_helm_chart_ships_the_same_alert_rules() -> None:
    chart = DEPLOY / "helm" / "restrav-monitor"
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["name"] == "restrav-monitor"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    assert values["worker"]["metricsPort"] == 9100 and values["serve"]["port"] == 8080
    assert (chart / "files" / "alerts.yml").read_text() == (
        DEPLOY / "prometheus" / "alerts.yml").read_text()


def test_helm_and_compose_replica_settings_exist_in_the_config() -> None:
    from monitor.config import ClusterSettings

    template = (DEPLOY / "helm" / "restrav-monitor" / "templates" / "serve.yaml").read_text()
    compose = (DEPLOY / "compose.yaml").read_text()
    names = set(re.findall(r"RESTRAV_SERVE__CLUSTER__([A-Z_]+)", template + compose))
    assert {"ENABLED", "REPLICA", "LEASE_TTL_S"} <= names
    for n in names:
        assert n.lower() in ClusterSettings.model_fields, n
    assert "fieldPath: metadata.name" in template  # identity = the pod name
    values = yaml.safe_load((DEPLOY / "helm" / "restrav-monitor" / "values.yaml").read_text())
    cluster = values["serve"]["cluster"]
    assert cluster["renewIntervalSeconds"] * 2 <= cluster["leaseTtlSeconds"]
