"""rotating_pool's decisions, without I/O: no sockets, threads, clocks of its own,
boto3 or SQLAlchemy.

The shells (`rotating_pool.connect`, `rotating_pool.store`, the sources and
the retirement scheduler) carry out what these modules decide and wait:

- `rotating_pool.core.classify`: what a failed login means (one verdict).
- `rotating_pool.core.plan`: the login plan and its `RetryBudget`.
- `rotating_pool.core.reads`: which secret version to read, and how.

The fleet simulator in ``benchmarks/`` drives the same modules with a virtual
clock, so what is measured is what ships.
"""
