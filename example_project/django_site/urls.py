"""URLs of the Django front end: the endpoints of :mod:`example_project.web`."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("start/<str:workflow>", views.start_workflow, name="start-workflow"),
    path("examples/<str:key>/start", views.start_example, name="start-example"),
    path("runs/<str:run_id>", views.run_status, name="run-status"),
    path("runs/<str:run_id>/approval", views.approval, name="run-approval"),
    path("webhooks/flow", views.webhook, name="flow-webhook"),
]
