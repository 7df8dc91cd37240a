"""The D1-compatible read store: migrations, the room projection, and queries."""
