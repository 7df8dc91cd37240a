"""The compose files are valid (checked offline: no Docker engine runs here)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")


@pytest.mark.skipif(COMPOSE is None, reason="Debian's docker-compose is not installed (.ci/run installs it)")
@pytest.mark.parametrize(
    "files",
    [["docker-compose.yml"], ["docker-compose.yml", "infra/nats/cluster/docker-compose.cluster.yml"]],
)
def test_compose_config_is_valid(files):
    args = [COMPOSE] + [a for f in files for a in ("-f", f)] + ["config", "--services"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert {"nats", "room", "ratelimit", "context", "projector", "gateway"} <= set(result.stdout.split())
