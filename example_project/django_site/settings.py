"""Django settings of the example project's front end; everything comes from the environment.

* ``REDIS_URL``: the Redis of the Celery broker and of the workflow state. The Celery app in
  :mod:`example_project.proj.celery` reads the same variable when it is imported; it is repeated
  here only so ``django.conf.settings.REDIS_URL`` documents what the site talks to. The views
  never build a Flow from settings: they import the project (``example_project.proj``).
* ``DEBUG``: ``1`` / ``true`` / ``yes`` turns Django's debug mode on (default off).
* ``DJANGO_SECRET_KEY``: signs the CSRF cookie; the default is for local use only.
* ``DJANGO_ALLOWED_HOSTS``: comma-separated extra host names (localhost and the test client's
  ``testserver`` are always allowed).

No database: the site keeps no state of its own (runs live in Redis, example data and webhook
deliveries in the project's SQLite file), and CSRF tokens live in a cookie, not a session.
"""

from __future__ import annotations

import os

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"

DEBUG = os.environ.get("DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "example-project-django-dev-only"
ALLOWED_HOSTS = [
    "localhost",
    "127.0.0.1",
    "[::1]",
    "testserver",
    *(h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h.strip()),
]

ROOT_URLCONF = "example_project.django_site.urls"
WSGI_APPLICATION = "example_project.django_site.wsgi.application"

INSTALLED_APPS: list[str] = []  # no models, no admin: the views are plain functions
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",  # protects the HTML approval form
]
DATABASES: dict[str, dict[str, str]] = {}
TEMPLATES: list[dict[str, object]] = []  # the status page is rendered by example_project.web

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
