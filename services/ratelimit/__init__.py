"""The ratelimit objects: the chat demo's per-IP limiter (memory only) and per-user AI quotas."""
