"""WSGI entry point of the Django front end: ``example_project.django_site.wsgi:application``.

Set ``REDIS_URL`` / ``EXAMPLE_PREFIX`` (read by the project at import) before importing this.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.django_site.settings")

application = get_wsgi_application()
