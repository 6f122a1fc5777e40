"""Moved to `rotating_pool.core.reads`; kept so that existing imports work."""

from rotating_pool.core.reads import Labels, Read, recovery_reads, steady_read

__all__ = ["Labels", "Read", "recovery_reads", "steady_read"]
