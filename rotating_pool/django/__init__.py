"""A Django database backend whose logins come from AWS Secrets Manager.

Set ``ENGINE`` to ``"rotating_pool.django"`` and name the secret in
``OPTIONS``; everything else is Django's own PostgreSQL backend
(`rotating_pool.django.base.DatabaseWrapper` subclasses it)::

    DATABASES = {
        "default": {
            "ENGINE": "rotating_pool.django",
            "NAME": "app",
            "OPTIONS": {"secret_id": "prod/app/db"},
        }
    }

See ``docs/guides/django.md`` for every option.
"""
