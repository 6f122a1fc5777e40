"""URLs of the example project."""

from django.urls import path

from examples.django_app.notes.views import notes

urlpatterns = [path("notes", notes)]
