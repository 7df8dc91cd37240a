"""Subject and stream names. The one place that says where a message travels.

- `cmd.<kind>.<key>`: requests to an object. The server maps them to
  `cmd.<kind>.<partition>.<key>`; only the partition's owner subscribes.
- `evt.<kind>.<key>`: the object's event stream (JetStream, one subject per object).
- `snap.<kind>.<key>`: the object's latest snapshot (JetStream, one message per subject).
- `out.<kind>.<key>`: what gateways fan out to sockets (core NATS, not persisted).
"""

from __future__ import annotations

from contracts.keys import subject_token

ROOM = "room"


def command_subject(kind: str, key: str) -> str:
    """Where a client sends a request to object `key` of `kind`."""
    return f"cmd.{kind}.{subject_token(key)}"


def partition_filter(kind: str, partition: int) -> str:
    """What the owner of one partition subscribes to, after the server's mapping."""
    return f"cmd.{kind}.{partition}.*"


def event_subject(kind: str, key: str) -> str:
    """The subject of object `key`'s event stream."""
    return f"evt.{kind}.{subject_token(key)}"


def event_stream(kind: str) -> str:
    """The JetStream stream holding every event subject of `kind`."""
    return f"EVT_{kind.upper()}"


def snapshot_subject(kind: str, key: str) -> str:
    """Where the latest snapshot of object `key` is kept (one message per subject)."""
    return f"snap.{kind}.{subject_token(key)}"


def snapshot_stream(kind: str) -> str:
    return f"SNAP_{kind.upper()}"


def out_subject(kind: str, key: str) -> str:
    """Where the object's owner publishes what sockets watching `key` should see."""
    return f"out.{kind}.{subject_token(key)}"
