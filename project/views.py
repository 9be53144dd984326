"""Pages of the demo site."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from project.management.commands.rundemo import DEMO_PASSWORD, DEMO_USERNAME
from project.models import Document


def home(request: HttpRequest) -> HttpResponse:
    """Show the way to the admin and the API, and the demo login when it exists."""
    context = {
        "api_url": request.build_absolute_uri(reverse("blobstore:list")),
        # rundemo makes this login, and only when DEBUG is on.
        "demo_login": (DEMO_USERNAME, DEMO_PASSWORD) if settings.DEBUG else None,
    }
    return render(request, "project/home.html", context)


def documents(request: HttpRequest) -> HttpResponse:
    """Show every document with its cover, each image and file through a signed URL."""
    return render(request, "project/documents.html", {"documents": Document.objects.all()})
