"""The Helm chart, rendered by the real Helm engine and checked against the Kubernetes schemas.

Rendering: ``helm-python-sdk`` binds Helm's own Go SDK (v4, ``libhelm_c``), so ``include``,
``toYaml``, Sprig and ``lookup`` behave as under ``helm template`` (offline: ``lookup`` finds
nothing). Validation: ``kubernetes-validate`` with its bundled (offline) schemas, strict
(unknown fields are errors). The four CRD kinds (KEDA ScaledObject and
TriggerAuthentication, ServiceMonitor, PrometheusRule) have no bundled schema: their fields
are checked by the assertions below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CHART = DEPLOY / "helm" / "restrav-monitor"
KUBE_VERSION = "1.30.0"
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}

EVERYTHING: dict[str, Any] = {
    "serve": {"replicas": 3, "streams": [{"id": "cam1", "url": "rtsp://cam.local/s"}]},
    "worker": {"keda": {"enabled": True}},
    "models": {"existingClaim": "restrav-models", "classifierPath": "/models/classifier"},
    "redis": {"existingSecret": "redis-url"},
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every manifest the chart renders with ``values`` (release ``rel``, namespace ``ns``)."""
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values=values or {}, name="rel", namespace="ns", is_install=True)
    docs = []
    for text in out.values():
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


WORKER_ONLY: dict[str, Any] = {
    "serve": {"enabled": False},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                "prometheusRule": {"enabled": True, "labels": {"release": "kps"}}},
}


@pytest.mark.parametrize("values", [None, EVERYTHING, WORKER_ONLY],
                         ids=["defaults", "everything", "worker-only"])
def test_every_manifest_validates_against_the_kubernetes_schemas(
    values: dict[str, Any] | None,
) -> None:
    docs = render(values)
    kinds = {d["kind"] for d in docs}
    # the Secret is serve's API token
    assert {"Deployment", "Service", "ConfigMap"} | ({"Secret"} if values is not WORKER_ONLY
                                                     else set()) <= kinds
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)  # raises on any error
    if values is EVERYTHING:
        assert kinds >= CRD_KINDS


def test_replicas_share_streams_through_leases_or_the_chart_refuses() -> None:
    def serve_env(values: dict[str, Any]) -> dict[str, str]:
        (dep,) = [d for d in render(values) if d["kind"] == "Deployment"
                  and d["metadata"]["name"].endswith("serve")]
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        return {e["name"]: str(e.get("value", "")) for e in c.get("env", [])}

    assert not any("CLUSTER" in k for k in serve_env({}))  # one pod: no leases
    env = serve_env({"serve": {"replicas": 3}})
    assert env["RESTRAV_SERVE__CLUSTER__ENABLED"] == "true"
    with pytest.raises(Exception, match=r"serve\.replicas > 1 needs serve\.cluster\.enabled"):
        render({"serve": {"replicas": 3, "cluster": {"enabled": False}}})


def test_keda_scales_on_lag_not_pending() -> None:
    (scaled,) = [d for d in render(EVERYTHING) if d["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis-streams"
    assert "pendingEntriesCount" not in meta  # pending stays ~1 per worker: never scales
    assert int(meta["lagCount"]) >= 1 and meta["consumerGroup"] == "workers"
    assert meta["stream"] == "restrav:jobs"
    worker = next(d for d in render(EVERYTHING)
                  if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-worker"))
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]


def _jobs_in_rules_and_dashboards() -> set[str]:
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    for dash in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        text += json.dumps(json.loads(dash.read_text()))
    return set(re.findall(r'job=\\?"([^"\\]+)', text))


def test_service_monitor_job_labels_match_the_rules_and_dashboards() -> None:
    """Prometheus Operator sets job = the Service name unless ``jobLabel`` names a Service
    label: the rules' ``up{job="restrav-worker"}`` must match what is scraped."""
    docs = render(EVERYTHING)
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    label = monitor["spec"]["jobLabel"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [
        d for d in docs if d["kind"] == "Service"
        and selector.items() <= d["metadata"]["labels"].items()
    ]
    ports = {p["name"] for s in scraped for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    jobs = {s["metadata"]["labels"][label] for s in scraped}
    used = _jobs_in_rules_and_dashboards()
    assert used and used <= jobs, (used, jobs)
    assert jobs == {"restrav-serve", "restrav-worker"}
    # compose scrapes under the same job names
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert used <= {c["job_name"] for c in prom["scrape_configs"]}
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())


def test_api_token_secret_survives_upgrades() -> None:
    """serve reads its token once: the chart must not mint a new one on ``helm upgrade``.
    Offline, ``lookup`` finds no live Secret (so a token is generated, as on a first
    install); what is checked is that the Secret looks itself up by its own name, is kept on
    uninstall, and that a given token or an existing Secret is used as is."""
    source = (CHART / "templates" / "secret.yaml").read_text()
    assert re.search(r'lookup "v1" "Secret" \.Release\.Namespace \$name', source)
    docs = render()
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "rel-restrav-monitor-api"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(secret["stringData"]["token"]) == 40
    (given,) = [d for d in render({"serve": {"apiToken": "t0ken"}}) if d["kind"] == "Secret"]
    assert given["stringData"]["token"] == "t0ken"
    existing = render({"serve": {"existingTokenSecret": "mine"}})
    assert not [d for d in existing if d["kind"] == "Secret"]
    serve = next(d for d in existing if d["kind"] == "Deployment"
                 and d["metadata"]["name"].endswith("-serve"))
    assert "mine" in json.dumps(serve["spec"]["template"]["spec"])


def test_monitoring_objects_carry_the_extra_labels_prometheus_selects_by() -> None:
    """kube-prometheus-stack picks ServiceMonitors and PrometheusRules by its ``release``
    label: the chart adds the labels given, next to its own."""
    docs = render(WORKER_ONLY)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        (doc,) = [d for d in docs if d["kind"] == kind]
        assert doc["metadata"]["labels"]["release"] == "kps", doc["metadata"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel"
    (plain,) = [d for d in render(EVERYTHING) if d["kind"] == "ServiceMonitor"]
    assert "release" not in plain["metadata"]["labels"]


def test_keda_reads_the_redis_password_from_the_existing_secret() -> None:
    """With redis.existingSecret the scaler gets the password through a
    TriggerAuthentication on that Secret; without it, no authentication is rendered."""
    docs = render(EVERYTHING)
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    (auth,) = [d for d in docs if d["kind"] == "TriggerAuthentication"]
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["spec"] == {"secretTargetRef": [
        {"parameter": "password", "name": "redis-url", "key": "password"}]}
    plain = render({"worker": {"keda": {"enabled": True}}})
    assert not [d for d in plain if d["kind"] == "TriggerAuthentication"]
    (scaled,) = [d for d in plain if d["kind"] == "ScaledObject"]
    assert "authenticationRef" not in scaled["spec"]["triggers"][0]


def test_a_worker_only_install_ships_no_serve_rules() -> None:
    """serve.enabled=false: RestravNoServeReplica (absent(up{job="restrav-serve"})) would
    page forever, and no other stream rule can fire: the stream group is left out, the
    queue rules are kept as shipped."""
    (rule,) = [d for d in render(WORKER_ONLY) if d["kind"] == "PrometheusRule"]
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "RestravNoServeReplica" not in names and "RestravStreamStalled" not in names
    assert rule["spec"]["groups"] == [g for g in shipped["groups"]
                                      if g["name"] != "restrav-streams"]


def test_keda_asks_the_sentinels_when_redis_is_sentinel() -> None:
    values: dict[str, Any] = {
        "redis": {"url": "redis+sentinel://s0:26379,s1:26379/restrav/0"},
        "worker": {"keda": {"enabled": True, "sentinelMaster": "restrav",
                            "sentinelAddresses": "s0:26379,s1:26379"}},
    }
    (scaled,) = [d for d in render(values) if d["kind"] == "ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-sentinel-streams"
    meta = trigger["metadata"]
    assert meta["addresses"] == "s0:26379,s1:26379" and meta["sentinelMaster"] == "restrav"
    assert "address" not in meta and meta["stream"] == "restrav:jobs"
    env = next(d for d in render(values) if d["kind"] == "Deployment"
               and d["metadata"]["name"].endswith("-worker"))["spec"]["template"]["spec"]
    urls = [e["value"] for c in env["containers"] for e in c["env"]
            if e["name"] == "RESTRAV_REDIS__URL"]
    assert urls == ["redis+sentinel://s0:26379,s1:26379/restrav/0"]


def test_keda_reads_the_cluster_when_redis_is_a_cluster() -> None:
    values: dict[str, Any] = {
        "redis": {"url": "redis+cluster://n0:6379,n1:6379"},
        "worker": {"keda": {"enabled": True, "clusterAddresses": "n0:6379,n1:6379"}},
    }
    (scaled,) = [d for d in render(values) if d["kind"] == "ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-cluster-streams"
    meta = trigger["metadata"]
    assert meta["addresses"] == "n0:6379,n1:6379" and "address" not in meta
    assert meta["stream"] == "restrav:jobs" and meta["consumerGroup"] == "workers"


def test_serve_mounts_a_volume_at_the_evidence_folder() -> None:
    def serve_pod(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        (dep,) = [d for d in render(values) if d["kind"] == "Deployment"
                  and d["metadata"]["name"].endswith("serve")]
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        return pod, c

    pod, c = serve_pod({})
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["RESTRAV_SERVE__EVIDENCE__DIR"] == "/var/lib/restrav/evidence"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["evidence"]["mountPath"] == "/var/lib/restrav/evidence"
    assert not mounts["evidence"].get("readOnly")
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["evidence"]["emptyDir"]["sizeLimit"] == "2Gi"
    pod, _ = serve_pod({"serve": {"evidence": {"existingClaim": "ev"}}})
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["evidence"]["persistentVolumeClaim"]["claimName"] == "ev"
    pod, c = serve_pod({"serve": {"evidence": {"enabled": False}}})
    assert "evidence" not in {v["name"] for v in pod["volumes"]}
    assert "RESTRAV_SERVE__EVIDENCE__DIR" not in {e["name"] for e in c["env"]}
