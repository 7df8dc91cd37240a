"""Fault drills on a 3-node NATS JetStream cluster (real nats-server processes, R3 streams
and KV, two room replicas, the gateway, projector, context and ratelimit services), each
under chat load from several sockets with an AI reply streaming (the offline provider).

After every drill: no acknowledged message is missing or doubled (on any socket, in the read
store, counted per sender), every socket's messages are in order and the AI reply's chunks
contiguous, and the read store equals a fresh replay (`durachat-replay check`). The drills
share one cluster; each uses rooms of its own and ends with the cluster whole again. Their
figures (stall, p99, partitions unowned) are printed; bench/cluster_bench.py records them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import nats
import pytest

from bench.cluster_bench import (
    DRILLS,
    PARTITION_DRILL,
    check_drill,
    partition_node,
    run_drill,
    start_system,
)
from contracts.subjects import ROOM, event_stream
from services.localsystem import LocalSystem
from services.runtime.natsserver import NetnsNetwork

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalSystem]:
    system = start_system(tmp_path_factory.mktemp("cluster"))
    try:
        yield system
    finally:
        system.stop()


def test_every_service_is_given_every_node_and_streams_are_r3(cluster):
    assert cluster.nats_cluster is not None and len(cluster.nats_cluster.nodes) == 3
    env = cluster.env()
    assert env["DURACHAT_NATS_URL"].count(",") == 2
    assert env["DURACHAT_STREAM_REPLICAS"] == "3"

    async def replicas() -> dict[str, int]:
        nc = await nats.connect(servers=cluster.nats_url.split(","))
        try:
            js = nc.jetstream()
            return {s.config.name: s.config.num_replicas for s in await js.streams_info()}
        finally:
            await nc.close()

    streams = asyncio.run(replicas())
    assert streams["EVT_ROOM"] == 3, streams
    assert streams["KV_leases-room"] == 3, streams
    assert all(n == 3 for n in streams.values()), streams


@pytest.mark.parametrize("drill", list(DRILLS))
async def test_drill_loses_and_doubles_nothing(cluster, drill):
    result, seen = await run_drill(cluster, drill, DRILLS[drill](cluster))
    problems = check_drill(cluster, result, seen)
    print(drill, json.dumps(result.figures()))
    assert result.acked > 20, f"too little load got through: {result.figures()}"
    assert not problems, problems
    # The reply ends either way; the room closes a reply whose streamer went quiet too long.
    assert result.ai_outcome != "did not end"


@pytest.fixture(scope="module")
def netns_cluster(tmp_path_factory) -> Iterator[LocalSystem]:
    """The same system with each NATS node in a network namespace of its own."""
    why_not = NetnsNetwork.available()
    if why_not is not None:
        pytest.skip(f"the partition drill needs Linux network namespaces: {why_not}")
    network = NetnsNetwork(3).create()
    try:
        system = start_system(tmp_path_factory.mktemp("netns-cluster"), network=network)
        try:
            yield system
        finally:
            system.stop()
    finally:
        network.delete()


async def test_a_partitioned_node_loses_and_doubles_nothing(netns_cluster):
    fault = partition_node(netns_cluster, event_stream(ROOM))
    result, seen = await run_drill(netns_cluster, PARTITION_DRILL, fault)
    problems = check_drill(netns_cluster, result, seen)
    print(PARTITION_DRILL, json.dumps(result.figures()))
    assert result.acked > 20, f"too little load got through: {result.figures()}"
    assert not problems, problems
    assert result.ai_outcome != "did not end"


def test_make_run_with_three_nodes_describes_them_and_restarts_a_dead_one(tmp_path):
    """`DURACHAT_NATS_NODES=3 make run`: three nodes in run.json, every URL given out, a
    node killed with -9 restarted on its store and ports by the supervisor."""
    import os
    import signal

    from tests.e2e.test_launcher import Launcher
    from tests.support import eventually_blocking

    launcher = Launcher(tmp_path / "data", DURACHAT_NATS_NODES="3")
    try:
        launcher.ready(60)
        run = launcher.run()
        assert len(run["nats_url"].split(",")) == 3, run
        assert {"nats-1", "nats-2", "nats-3"} <= set(run["pids"]), run["pids"]
        for node in ("nats-1", "nats-2", "nats-3"):
            assert (tmp_path / "data" / node / "jetstream").is_dir()
        victim = run["pids"]["nats-2"]
        os.kill(victim, signal.SIGKILL)
        eventually_blocking(
            lambda: launcher.run()["pids"]["nats-2"] != victim and launcher.healthy(), 30,
            lambda: f"nats-2 restarted:\n{launcher.text()[-2000:]}")
        assert "nats-2 exited (killed by SIGKILL); restarting it" in launcher.text()
    finally:
        launcher.stop()
