"""The Django front end of the example project (settings, URLs, views, WSGI entry point).

Serve it with ``python example_project/manage.py runserver`` (repo root) or any WSGI server
pointed at :data:`example_project.django_site.wsgi.application`. The endpoints are those of
:mod:`example_project.web`, which the views delegate to.
"""
