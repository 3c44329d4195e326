"""The benchmark: saga throughput and rollback latency against a bare Celery chain.

`python -m bench` (or `make bench`). See docs/performance.md for the figures and what they mean.
"""
