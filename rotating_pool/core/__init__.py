"""rotating_pool's decisions, without I/O: no sockets, threads, clocks of its own,
boto3 or SQLAlchemy.

The shells (`rotating_pool.connect`, `rotating_pool.store`, the sources and
the retirement scheduler) carry out what these modules decide and wait:

- `rotating_pool.core.classify`: what a failed login means (one `Verdict`).
- `rotating_pool.core.plan`: the login plan and its `RetryBudget`; it decides
  when the store confirms new credentials.
- `rotating_pool.core.ledger`: what was refused, what a refetch found, and what
  may be adopted (the value `CredentialStore` holds under its lock).
- `rotating_pool.core.reads`: which secret version to read, and how.
- `rotating_pool.core.retirement`: retirement's windows and timing.

The fleet simulator in ``benchmarks/`` drives the same modules with a virtual
clock, so what is measured is what ships.
"""
