"""The projector: event streams in, D1-compatible read models out."""
