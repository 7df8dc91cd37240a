"""The committed nats-server config is what the renderer makes for the default P."""

from pathlib import Path

from services.runtime.natsconf import render_nats_conf
from services.runtime.settings import RuntimeSettings

ROOT = Path(__file__).resolve().parents[2]


def test_committed_config_matches_the_default_partition_count():
    default = RuntimeSettings.model_fields["partitions"].default
    # Rendered with the documented default for a deployment: fsync before every ack.
    assert (ROOT / "infra/nats/nats.conf").read_text() == render_nats_conf(default, "always")


def test_cluster_nodes_map_commands_to_the_same_partitions():
    mapping = '"cmd.*.*": "cmd.{{wildcard(1)}}.{{partition(16,2)}}.{{wildcard(2)}}"'
    assert mapping in (ROOT / "infra/nats/nats.conf").read_text()
    assert mapping in (ROOT / "infra/nats/cluster/common.conf").read_text()


def test_sync_interval_is_rendered_and_a_bad_one_is_refused():
    import pytest

    from services.run import LauncherSettings
    from services.runtime.natsconf import check_sync_interval

    assert "sync_interval: always" in render_nats_conf(16, "always")
    assert "sync_interval" not in render_nats_conf(16, "default")
    assert check_sync_interval("500ms") == "500ms"
    with pytest.raises(ValueError, match="'always', 'default'"):
        check_sync_interval("sometimes")
    assert LauncherSettings().nats_sync_interval == "always"  # the documented default
    with pytest.raises(ValueError, match="no majority"):
        LauncherSettings(nats_nodes=2)


def test_a_cluster_node_names_itself_and_routes_to_every_node():
    from services.runtime.natsconf import ClusterNode

    routes = [f"nats-route://127.0.0.1:{p}" for p in (7001, 7002, 7003)]
    text = render_nats_conf(16, "always", ClusterNode("nats-2", "drill", "127.0.0.1", 7002, routes))
    assert "server_name: nats-2" in text and "listen: 127.0.0.1:7002" in text
    assert all(route in text for route in routes)
    assert 'ping_interval: "2s"' in text  # a frozen peer's routes are dropped in seconds


def test_the_compose_cluster_fsyncs_always_and_pings_often():
    common = (ROOT / "infra/nats/cluster/common.conf").read_text()
    assert "sync_interval: always" in common
    assert 'ping_interval: "2s"' in common
