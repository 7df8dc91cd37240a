"""The optional observability stack: Prometheus scrapes every service where it serves its
metrics, and the Grafana dashboard asks only for metrics that the processes export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import services.runtime.metrics  # noqa: F401 (registers every durachat metric)

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def exported_names() -> set[str]:
    names = set()
    for collector_metrics in REGISTRY.collect():
        names.add(collector_metrics.name)
        for sample in collector_metrics.samples:
            names.add(sample.name)
    return names


def test_prometheus_scrapes_every_service_on_its_metrics_port():
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    targets = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets[job["job_name"]] = {(name, sd["port"]) for name in sd["names"]}
        for static in job.get("static_configs", []):
            targets[job["job_name"]] = {tuple(t.split(":")) for t in static["targets"]}
    compose = (ROOT / "docker-compose.yml").read_text()
    port = int(re.search(r"DURACHAT_METRICS_PORT: \$\{DURACHAT_METRICS_PORT:-(\d+)\}", compose)[1])
    assert targets["gateway"] == {("gateway", 8000)}
    for service in ("room", "ratelimit", "context"):
        assert targets[service] == {(service, port)}
    assert targets["projector"] == {("projector", str(port))}


def test_the_dashboard_asks_only_for_exported_metrics():
    dashboard = json.loads((ROOT / "infra/grafana/dashboards/durachat.json").read_text())
    datasource = yaml.safe_load(
        (ROOT / "infra/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    exported = exported_names()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 15
    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"\bdurachat_[a-z_]+", target["expr"]))
    unknown = {name for name in used if name not in exported
               and not any(name.removesuffix(s) in exported for s in SUFFIXES)}
    assert unknown == set()
    # Every metric family the processes export is on some panel.
    families = {m.name for m in REGISTRY.collect() if m.name.startswith("durachat_")}
    shown = {name for name in families if any(u.startswith(name) for u in used)}
    assert families - shown == set()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_the_profile_is_optional(tmp_path):
    env = {**os.environ, "DURACHAT_TOKEN_SECRET": "a-secret-of-32-characters-000000"}
    (tmp_path / "empty.env").write_text("")

    result = subprocess.run(
        ["docker-compose", "--env-file", str(tmp_path / "empty.env"), "-f", "docker-compose.yml",
         "config"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == {"prometheus", "grafana", "jaeger"}
    assert all(services[name]["profiles"] == ["observability"] for name in profiled)
