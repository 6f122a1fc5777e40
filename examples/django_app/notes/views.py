"""The example's views: write a note (one transaction per request), count them."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from examples.django_app.notes.models import Note


@csrf_exempt
def notes(request: HttpRequest) -> JsonResponse:
    """POST: write one note in a transaction; GET: how many there are."""
    if request.method == "POST":
        with transaction.atomic():
            note = Note.objects.create(worker=int(request.POST.get("worker", "0")))
        return JsonResponse({"id": note.pk}, status=201)
    return JsonResponse({"count": Note.objects.count()})
