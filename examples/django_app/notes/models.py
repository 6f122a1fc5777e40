"""The example's one model."""

from django.db import models


class Note(models.Model):
    """A row written by one request."""

    worker = models.IntegerField()
    written_at = models.DateTimeField(auto_now_add=True)
