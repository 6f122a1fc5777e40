"""Moved to `rotating_pool.core.plan` and `rotating_pool.core.classify`; kept so
that existing imports work."""

from rotating_pool.core.classify import (
    Failure,
    Verdict,
    classify_login_error,
    is_login_rejection,
    judge_login_error,
)
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
    Success,
    Wait,
    first_login,
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
    "Success",
    "Verdict",
    "Wait",
    "classify_login_error",
    "first_login",
    "is_login_rejection",
    "judge_login_error",
    "login_plan",
]
