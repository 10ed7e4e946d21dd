"""Benchmarks for celery_flow. Run ``python -m bench.bench_core`` (``make bench``)."""
