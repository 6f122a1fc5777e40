"""The WSGI application: ``gunicorn examples.django_app.wsgi`` (see manage.py for migrate).

DB_SECRET_ID=prod/app/db python -m examples.django_app.manage migrate
DB_SECRET_ID=prod/app/db gunicorn --threads 16 examples.django_app.wsgi
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
application = get_wsgi_application()
