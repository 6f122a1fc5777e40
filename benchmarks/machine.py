"""What the figures were measured on: cores, memory, load, and software versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from rotating_pool.testing.postgres import PG_BIN

PACKAGES = (
    "rotating_pool",
    "SQLAlchemy",
    "psycopg",
    "boto3",
    "botocore",
    "aws-secretsmanager-caching",
    "aws-advanced-python-wrapper",
    "moto",
    "matplotlib",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _postgres_version() -> str:
    try:
        answer = subprocess.run(
            [str(PG_BIN / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return answer.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict[str, Any]:
    """The machine and software, for the results file and the README."""
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": _postgres_version(),
        "packages": {package: _version(package) for package in PACKAGES},
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: other work on the shared cores shows here."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
