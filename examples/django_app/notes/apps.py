"""The notes app."""

from django.apps import AppConfig


class NotesConfig(AppConfig):
    """The example's one app."""

    name = "examples.django_app.notes"
    label = "notes"
