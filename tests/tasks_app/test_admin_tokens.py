from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from tasks_app.models import ApiToken, Membership
from tasks_app.services.accounts import user_create

pytestmark = pytest.mark.django_db


def test_a_token_made_in_the_admin_is_shown_once_works_and_can_be_revoked(admin_client) -> None:
    user = user_create(username="api-user", tenant="acme")

    response = admin_client.post("/admin/tasks_app/apitoken/add/", {"user": user.pk, "name": "ci"}, follow=True)

    assert response.status_code == 200
    key = re.search(r"<code>(cs_[A-Za-z0-9_-]+)</code>", response.content.decode()).group(1)
    token = ApiToken.objects.get(user=user)
    assert token.name == "ci" and key not in token.key_hash and token.prefix == key[:10]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/tasks/").status_code == 200
    assert key not in admin_client.get(f"/admin/tasks_app/apitoken/{token.pk}/change/").content.decode()

    admin_client.post("/admin/tasks_app/apitoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]})

    assert client.get("/api/v1/tasks/").status_code == 401


def test_memberships_and_token_lists_render(admin_client) -> None:
    user_create(username="member", tenant="globex")
    assert admin_client.get("/admin/tasks_app/membership/").status_code == 200
    assert "globex" in admin_client.get("/admin/tasks_app/membership/").content.decode()
    assert admin_client.get("/admin/tasks_app/apitoken/").status_code == 200
    assert Membership.objects.get(user=get_user_model().objects.get(username="member")).tenant == "globex"
