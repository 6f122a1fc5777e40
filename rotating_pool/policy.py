"""Moved to `rotating_pool.core.plan` and `rotating_pool.core.classify`; kept so
that existing imports work."""

from rotating_pool.core.classify import Failure, classify_login_error, is_login_rejection
from rotating_pool.core.plan import (
    MIN_LOGIN_SECONDS,
    REFUSED_REUSE_SECONDS,
    UNRECOGNISED_REUSE_SECONDS,
    Action,
    Answer,
    Connect,
    Load,
    Recheck,
    Refetch,
    RetryBudget,
    Wait,
    login_plan,
)

__all__ = [
    "MIN_LOGIN_SECONDS",
    "REFUSED_REUSE_SECONDS",
    "UNRECOGNISED_REUSE_SECONDS",
    "Action",
    "Answer",
    "Connect",
    "Failure",
    "Load",
    "Recheck",
    "Refetch",
    "RetryBudget",
    "Wait",
    "classify_login_error",
    "is_login_rejection",
    "login_plan",
]
