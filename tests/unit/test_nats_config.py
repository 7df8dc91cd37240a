"""The committed nats-server config is what the renderer makes for the default P."""

from pathlib import Path

from services.runtime.natsconf import render_nats_conf
from services.runtime.settings import RuntimeSettings

ROOT = Path(__file__).resolve().parents[2]


def test_committed_config_matches_the_default_partition_count():
    default = RuntimeSettings.model_fields["partitions"].default
    assert (ROOT / "infra/nats/nats.conf").read_text() == render_nats_conf(default)


def test_cluster_nodes_map_commands_to_the_same_partitions():
    mapping = '"cmd.*.*": "cmd.{{wildcard(1)}}.{{partition(16,2)}}.{{wildcard(2)}}"'
    assert mapping in (ROOT / "infra/nats/nats.conf").read_text()
    assert mapping in (ROOT / "infra/nats/cluster/common.conf").read_text()
