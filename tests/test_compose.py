"""The compose deployment, piece by piece with real binaries (no Docker engine here).

* Debian's ``docker-compose`` (1.x) parses and validates ``deploy/compose.yaml``;
* a worker started with the compose's ``config/worker.yaml`` (``/clips`` pointed at a
  temporary folder, as the bind mount would) scores a clip enqueued with the README's
  ``redis-cli XADD`` command (real redis-cli);
* the real ``prometheus``, with the compose's ``prometheus/prometheus.yml`` (service
  names pointed at loopback ports), delivers a firing alert to the real Alertmanager
  running the compose's ``alertmanager/alertmanager.yml``.

Not run: the images themselves, Docker networking and DNS, the healthchecks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import load_settings

from .media import write_clip
from .redisproc import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def compose_config() -> dict[str, Any]:
    """``docker-compose config`` of deploy/compose.yaml: validated and resolved by the CLI."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    env = {**os.environ, "MODELS_DIR": "/srv/models", "CLIPS_DIR": "/srv/clips"}
    proc = subprocess.run(
        [exe, "-f", str(DEPLOY / "compose.yaml"), "config"], capture_output=True, text=True,
        env=env, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = yaml.safe_load(proc.stdout)
    return config


def test_compose_file_is_valid_and_workers_can_succeed() -> None:
    config = compose_config()
    services = config["services"]
    assert {"redis", "serve", "serve-2", "worker", "prometheus", "alertmanager"} <= set(services)
    worker = services["worker"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    assert mounts["/clips"] == "/srv/clips"
    # the worker reads config/worker.yaml, mounted with the config folder
    argv = worker["command"]
    config_path = Path(argv[argv.index("--config") + 1])
    assert config_path.parent.as_posix() in mounts
    settings = load_settings(DEPLOY / "config" / config_path.name)
    assert [str(r) for r in settings.queue.local_roots] == ["/clips"]
    assert settings.queue.allow_local_paths and settings.queue.allowed_url_schemes
    assert "--config" in worker["healthcheck"]["test"]
    # Prometheus sends alerts to the alertmanager service
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (target,) = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "alertmanager"
    assert {str(p["target"]) for p in services["alertmanager"]["ports"]} == {port}
    # both serve replicas write evidence to one named volume, at the folder they are told
    for name in ("serve", "serve-2"):
        svc = services[name]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        folder = svc["environment"]["RESTRAV_SERVE__EVIDENCE__DIR"]
        assert mounts[folder] == "evidence" and "evidence" in config["volumes"], name


def test_worker_with_the_compose_config_scores_a_clip_from_the_mounted_folder(
    tmp_path: Path, tiny_model_dir: Path, redis_url: str
) -> None:
    clips = tmp_path / "clips"  # what CLIPS_DIR is mounted as (/clips in the container)
    clips.mkdir()
    write_clip(clips / "8841.mp4", fps=25, n_frames=60, size=(64, 48))
    cfg = yaml.safe_load((DEPLOY / "config" / "worker.yaml").read_text())
    cfg["queue"]["local_roots"] = [str(clips) if r == "/clips" else r
                                   for r in cfg["queue"]["local_roots"]]
    cfg["model"].update({"ref": str(tiny_model_dir), "device": "cpu", "image_size": 112,
                         "threads": 1})
    cfg_path = tmp_path / "worker.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "RESTRAV_REDIS__URL": redis_url}
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "worker", "--config", str(cfg_path)],
        cwd=ROOT, env=env, stdout=log, stderr=log,
    )
    try:
        # the README's command, with the clip's path as the worker sees it
        readme = (ROOT / "README.md").read_text()
        xadd = next(line.strip() for line in readme.splitlines()
                    if line.strip().startswith("redis-cli XADD restrav:jobs"))
        argv = shlex.split(xadd.replace("/data/uploads/", f"{clips}/"))
        port = redis_url.rsplit(":", 1)[1].split("/")[0]
        subprocess.run([argv[0], "-p", port, *argv[1:]], check=True, capture_output=True)
        job_id = re.search(r'"job_id":"([^"]+)"', xadd).group(1)  # type: ignore[union-attr]
        deadline = time.monotonic() + 180
        raw = None
        while raw is None and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            raw = subprocess.run(
                ["redis-cli", "-p", port, "--raw", "GET", f"restrav:results:{{{job_id}}}"],
                capture_output=True, text=True, check=True,
            ).stdout.strip() or None
            time.sleep(0.5)
        assert raw is not None, (tmp_path / "worker.log").read_text()
        result = json.loads(raw)
        assert result["ok"] is True, result
        assert result["status"] == "scored" and result["clip"]
        # no classifier is configured in compose: the bundled one gives a P(AI)
        assert isinstance(result["clip"]["window"]["score"], float), result["clip"]["window"]
        assert isinstance(result["aggregate"]["score_mean"], float)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[int]:
    exe = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if exe is None:
        pytest.skip("prometheus-alertmanager not installed (apt-get install it)")
    port, cluster = free_port(), free_port()
    with (tmp_path / "alertmanager.log").open("w") as log:
        proc = subprocess.Popen(
            [exe, f"--config.file={DEPLOY / 'alertmanager' / 'alertmanager.yml'}",
             f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{port}",
             f"--cluster.listen-address=127.0.0.1:{cluster}"],
            stdout=log, stderr=log,
        )
    try:
        assert wait_port(port, 60), (tmp_path / "alertmanager.log").read_text()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_firing_alert_reaches_alertmanager(tmp_path: Path, alertmanager: int) -> None:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus not installed")
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    # the compose's config, with the service names pointed at loopback
    prom["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{alertmanager}"
    ]
    dead = free_port()  # no worker there: up{job="restrav-worker"} == 0
    for job in prom["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{dead}"]}]
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    # the shipped rules wait minutes (`for:`); a probe rule with the same worker-down
    # expression but no wait shows the delivery path within seconds
    rule = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    down = next(r for g in rule["groups"] for r in g["rules"]
                if r.get("alert") == "RestravWorkerDown")
    probe = {"groups": [{"name": "probe", "rules": [
        {"alert": "RestravWorkerDownProbe", "expr": down["expr"],
         "labels": down.get("labels", {})}]}]}
    (tmp_path / "probe.yml").write_text(yaml.safe_dump(probe))
    prom["rule_files"] = [*prom["rule_files"], "probe.yml"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))
    port = free_port()
    with (tmp_path / "prometheus.log").open("w") as log:
        proc = subprocess.Popen(
            [exe, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=log,
        )
    try:
        url = f"http://127.0.0.1:{alertmanager}/api/v2/alerts"
        deadline = time.monotonic() + 120
        names: set[str] = set()
        while "RestravWorkerDownProbe" not in names and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            with urllib.request.urlopen(url, timeout=5) as resp:
                alerts = json.loads(resp.read())
            names = {a["labels"]["alertname"] for a in alerts}
            time.sleep(0.5)
        assert "RestravWorkerDownProbe" in names, (tmp_path / "prometheus.log").read_text()
        alert = next(a for a in alerts if a["labels"]["alertname"] == "RestravWorkerDownProbe")
        assert alert["labels"]["job"] == "restrav-worker"
        assert alert["receivers"][0]["name"] == "default"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_compose_serve_and_worker_score_with_the_bundled_classifier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each serve and worker service, with its config file and its environment as compose
    resolves them, loads a classifier: P(AI) is reported, and the LikelyAIGenerated alert
    can fire. (The worker's P(AI) is checked end to end in the test above.)"""
    from monitor.core.classifier import load_classifier
    from monitor.core.published import bundled_classifier_dir
    from workers.common import build_classifier

    services = compose_config()["services"]
    bundled = load_classifier(bundled_classifier_dir())
    for name in ("serve", "serve-2", "worker"):
        svc = services[name]
        argv = svc["command"]
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        for key in [k for k in os.environ if k.startswith("RESTRAV_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith("RESTRAV_") and not key.startswith("RESTRAV_REDIS__"):
                monkeypatch.setenv(key, str(value))
        settings = load_settings(DEPLOY / "config" / Path(argv[argv.index("--config") + 1]).name)
        clf = build_classifier(settings)
        assert clf is not None, f"{name}: no classifier, P(AI) would be null"
        assert clf.threshold == bundled.threshold and clf.zero_step_angle_deg == 90.0, name
