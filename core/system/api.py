from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .permissions import ANY_SCOPE


class WhoAmIApi(APIView):
    """The calling key's name and scopes: a cheap way for a client to check its credentials."""

    required_scope = ANY_SCOPE

    class OutputSerializer(serializers.Serializer):
        name = serializers.CharField()
        prefix = serializers.CharField()
        scopes = serializers.ListField(child=serializers.CharField())

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(request.user).data)
