"""The replay tooling (`durachat-replay`): rebuild read models from the event streams,
check them against a replay, and inspect, export and import a room's history."""
