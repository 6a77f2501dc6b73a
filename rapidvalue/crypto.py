"""Encryption at rest for secrets we must be able to read back (webhook signing secrets,
connector credentials): Fernet with key rotation (``settings.FERNET_KEYS``, first key encrypts)."""

from __future__ import annotations

import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@functools.cache
def _fernet() -> MultiFernet:
    return MultiFernet([Fernet(key.encode() if isinstance(key, str) else key) for key in settings.FERNET_KEYS])


def encrypt(plaintext: str) -> str:
    """Encrypt for storage; the result is ASCII and safe in a text column."""
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    """Decrypt a value from :func:`encrypt`; raises ValueError when no configured key fits."""
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("cannot decrypt: no configured key matches") from exc
