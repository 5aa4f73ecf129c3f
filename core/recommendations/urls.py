from django.urls import path

from .api import PopularApi, RankApi, SimilarItemsApi, UserRecommendationsApi

urlpatterns = [
    path(
        "users/<str:user_id>/recommendations",
        UserRecommendationsApi.as_view(),
        name="user-recommendations",
    ),
    path("items/<str:item_id>/similar", SimilarItemsApi.as_view(), name="similar-items"),
    path("popular", PopularApi.as_view(), name="popular"),
    path("rank", RankApi.as_view(), name="rank"),
]
