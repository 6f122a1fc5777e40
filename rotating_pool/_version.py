"""The package's version, in one place: `rotating_pool.__version__`, the
telemetry's instrumentation scope and pyproject.toml (setuptools' ``attr:``) read it."""

__version__ = "0.1.0"
