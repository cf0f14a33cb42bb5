"""Credentials at rest: Fernet (AES-128-CBC + HMAC) keyed from SCHEDULER_ENCRYPTION_KEY.

Without an explicit key the Fernet key is derived from SECRET_KEY, so the embedded default works with no
setup; production sets its own key (rotating SECRET_KEY must not make stored credentials unreadable).
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


class CredentialsUnreadable(Exception):
    """The stored credentials cannot be decrypted with the configured key."""


@cache
def _fernet(key_material: str) -> Fernet:
    try:
        return Fernet(key_material.encode())
    except ValueError:
        # Not a Fernet key: derive one, so any sufficiently long secret works.
        digest = hashlib.sha256(b"cli-scheduler-credentials:" + key_material.encode()).digest()
        return Fernet(base64.urlsafe_b64encode(digest))


def fernet() -> Fernet:
    return _fernet(settings.SCHEDULER_ENCRYPTION_KEY or settings.SECRET_KEY)


def encrypt_json(value: dict[str, str]) -> str:
    return fernet().encrypt(json.dumps(value, sort_keys=True).encode()).decode()


def decrypt_json(token: str) -> dict[str, str]:
    try:
        return json.loads(fernet().decrypt(token.encode()))
    except InvalidToken:
        # Never include the token or key in the message.
        raise CredentialsUnreadable(
            "stored credentials cannot be decrypted: SCHEDULER_ENCRYPTION_KEY differs from the one used to "
            "store them"
        ) from None
