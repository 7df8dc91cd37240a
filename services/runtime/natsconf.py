"""The nats-server configuration durachat needs: JetStream and the partition mapping.

`infra/nats/nats.conf` is this module's output for the default P=16 (a test keeps them equal);
`make run` and the tests render it for whatever P the settings say.
"""

from __future__ import annotations

import argparse
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


def render_nats_conf(partitions: int) -> str:
    """The configuration text for `partitions` partitions per object kind."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return TEMPLATE.format(partitions=partitions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--out", type=Path, help="write here instead of stdout")
    args = parser.parse_args()
    text = render_nats_conf(args.partitions)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
