from django.urls import path

from .api import EventCreateApi

urlpatterns = [
    path("events", EventCreateApi.as_view(), name="event-create"),
]
