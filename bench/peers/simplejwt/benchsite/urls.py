import time

from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView


class Protected(APIView):
    """The auth-only route: the user's id and username."""

    def get(self, request: Request) -> Response:
        return Response({"id": request.user.id, "username": request.user.username})


class Io(APIView):
    """Protected, then waits 50 ms (an upstream call)."""

    def get(self, request: Request) -> Response:
        time.sleep(0.05)
        return Response({"id": request.user.id, "waited_ms": 50})


urlpatterns = [
    path("protected", Protected.as_view()),
    path("io", Io.as_view()),
    path("api/token/", TokenObtainPairView.as_view()),
    path("api/token/refresh/", TokenRefreshView.as_view()),
]
