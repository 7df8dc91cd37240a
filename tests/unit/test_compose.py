"""The compose files are valid (checked offline: no Docker engine runs here), and a stack
without its token secret stops at `config`, saying what to set, instead of starting a gateway
that refuses to run and is restarted forever."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
FILES = [["docker-compose.yml"], ["docker-compose.yml", "infra/nats/cluster/docker-compose.cluster.yml"]]

pytestmark = pytest.mark.skipif(
    COMPOSE is None, reason="Debian's docker-compose is not installed (.ci/run installs it)"
)


def compose_config(files: list[str], secret: str | None, tmp: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DURACHAT_TOKEN_SECRET"}
    if secret is not None:
        env["DURACHAT_TOKEN_SECRET"] = secret
    # --env-file: a developer's .env (which may hold the secret) is not read.
    (tmp / "empty.env").write_text("")
    args = [COMPOSE, "--env-file", str(tmp / "empty.env")] + [a for f in files for a in ("-f", f)]
    return subprocess.run([*args, "config", "--services"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.mark.parametrize("files", FILES)
def test_compose_config_is_valid_with_a_secret(files, tmp_path):
    result = compose_config(files, "a-secret-of-32-characters-000000", tmp_path)
    assert result.returncode == 0, result.stderr
    assert {"nats", "room", "ratelimit", "context", "upload", "projector", "gateway"} <= set(result.stdout.split())


@pytest.mark.parametrize("files", FILES)
@pytest.mark.parametrize("secret", [None, ""])
def test_compose_config_without_the_secret_fails_saying_what_to_set(files, secret, tmp_path):
    result = compose_config(files, secret, tmp_path)
    assert result.returncode != 0, result.stdout
    assert "set DURACHAT_TOKEN_SECRET" in result.stderr, result.stderr
