"""Benchmarks of the whole system; `python -m bench.chat_bench` (see bench/README.md)."""
