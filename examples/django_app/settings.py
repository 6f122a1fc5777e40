"""Settings of the example Django project: one app (`notes`), one database.

The database's login comes from a rotating secret through rotating_pool's
backend; everything else is plain Django. Environment:

- ``DB_SECRET_ID``: the secret's name or ARN (required).
- ``DB_NAME``: the database (default ``app``); host and port come from the secret.
- ``DB_POOL=1``: use Django's psycopg pool (Django 5.1+) instead of one
  connection per thread; ``DB_CONN_MAX_AGE``: seconds a thread keeps its
  connection (default 0: closed after each request).
- ``DB_RETIRE_AFTER``: close connections on superseded credentials within this
  many seconds of a rotation (default: off).
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS = ["examples.django_app.notes"]
MIDDLEWARE: list[str] = []
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_options: dict[str, object] = {"secret_id": os.environ.get("DB_SECRET_ID", "")}
if os.environ.get("DB_POOL") == "1":
    _options["pool"] = {"min_size": 2, "max_size": 16, "timeout": 20}
if os.environ.get("DB_RETIRE_AFTER"):
    _options["retire_after"] = float(os.environ["DB_RETIRE_AFTER"])

DATABASES = {
    "default": {
        "ENGINE": "rotating_pool.django",
        "NAME": os.environ.get("DB_NAME", "app"),
        "CONN_MAX_AGE": int(os.environ.get("DB_CONN_MAX_AGE", "0")),
        "OPTIONS": _options,
    }
}
