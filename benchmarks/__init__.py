"""Benchmarks of rotating_pool against its baselines and peers, on a local stack.

Run them all with ``python -m benchmarks.run`` (``--quick`` for a short run that
only checks they work). Each benchmark is one module with a ``run(bed,
settings)`` function returning a JSON-ready dict; `benchmarks.run` starts the
local stack, runs them, prints a table and writes ``benchmarks/results/``.
"""
