"""The nats-server configuration durachat needs: JetStream, the partition mapping, how often
JetStream fsyncs (`sync_interval`), and, for a cluster, the node's name and routes.

`infra/nats/nats.conf` is this module's output for the default P=16 (a test keeps them equal);
`make run` and the tests render it for whatever P the settings say.

`sync_interval`: "always" fsyncs every write before JetStream acknowledges it (survives an OS
crash or power loss of the machine); "default" leaves NATS's own (fsync every 2 min: a
process kill loses nothing, since the OS page cache keeps the data, but a crash of the OS or
the power may lose up to the last 2 min of acknowledged writes unless other replicas, on
other machines, still hold them); a duration ("1s", "10s") fsyncs that often.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = """\
# durachat nats-server configuration, rendered by `python -m services.runtime.natsconf`.
# Listen address, ports and the store dir are given on the command line (-a -p -m -sd).

jetstream: enabled
max_payload: 1MB

# Every object command cmd.<kind>.<key> is mapped by the server to one of {partitions} partitions,
# cmd.<kind>.<partition>.<key>, so every client agrees on the partition without hashing code
# and only the partition's owner subscribes to it.
mappings = {{
  "cmd.*.*": "cmd.{{{{wildcard(1)}}}}.{{{{partition({partitions},2)}}}}.{{{{wildcard(2)}}}}"
}}
"""

SYNC_DEFAULT = "default"  # NATS's own: fsync every 2 minutes
_DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")


def check_sync_interval(value: str) -> str:
    """`value` if nats-server takes it as a sync_interval: "always", "default" or a duration."""
    if value in ("always", SYNC_DEFAULT) or _DURATION.match(value):
        return value
    raise ValueError(
        f"sync_interval {value!r}: use 'always', 'default' (NATS's 2 min) or a duration "
        "such as '1s' or '500ms'"
    )


@dataclass(frozen=True)
class ClusterNode:
    """One node's place in a cluster: its name, its route port, and every node's routes."""

    name: str  # server_name: unique and stable (JetStream places replicas by it)
    cluster: str  # the cluster's name, the same on every node
    route_host: str
    route_port: int
    routes: Sequence[str]  # nats-route://host:port of every node (a node skips itself)


def render_nats_conf(
    partitions: int, sync_interval: str = SYNC_DEFAULT, cluster: ClusterNode | None = None
) -> str:
    """The configuration text for `partitions` partitions per object kind; with `cluster`,
    that node's name and routes; with `sync_interval`, how often JetStream fsyncs."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    check_sync_interval(sync_interval)
    text = TEMPLATE.format(partitions=partitions)
    if sync_interval != SYNC_DEFAULT:
        text = text.replace(
            "jetstream: enabled\n",
            "# How often JetStream fsyncs: 'always' = before every acknowledgement.\n"
            f"jetstream {{\n  sync_interval: {sync_interval}\n}}\n",
        )
    if cluster is not None:
        routes = "\n".join(f"    {route}" for route in cluster.routes)
        text += (
            "\n# Pings every 2 s (NATS: 2 min): a frozen peer's routes, and the interest they\n"
            "# carry (direct gets, stream requests), are dropped after ~6 s, not minutes.\n"
            'ping_interval: "2s"\nping_max: 2\n'
            f"\nserver_name: {cluster.name}\n"
            f"cluster {{\n  name: {cluster.cluster}\n"
            f"  listen: {cluster.route_host}:{cluster.route_port}\n"
            f"  routes: [\n{routes}\n  ]\n}}\n"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--sync-interval", default="always", help="always | default | a duration")
    parser.add_argument("--out", type=Path, help="write here instead of stdout")
    args = parser.parse_args()
    text = render_nats_conf(args.partitions, args.sync_interval)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
