"""API keys: ``lg-<id>-<secret>``. Only sha256(secret) and the id are stored.

The id is public (shown in listings as the key's prefix); the secret is compared in constant
time against the stored hash. Keys are random (256 bits), so a fast hash is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from service.auth import Principal, Role
from service.errors import AuthenticationFailed, MissingAPIKey
from service.limits.quota import KeyLimits

KEY_PREFIX = "lg"


@dataclass(frozen=True, slots=True)
class StoredKey:
    principal: Principal
    secret_hash: str


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    secret_hash: str
    plaintext: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> NewKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, hash_secret(secret), f"{KEY_PREFIX}-{key_id}-{secret}")


def split_key(presented: str) -> tuple[str, str]:
    parts = presented.split("-", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        raise AuthenticationFailed("Invalid API key.")
    return parts[1], parts[2]


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise MissingAPIKey("Missing API key: send it as 'Authorization: Bearer <key>'.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise MissingAPIKey("Malformed Authorization header: expected 'Bearer <key>'.")
    return token.strip()


def verify(stored: StoredKey | None, secret: str) -> Principal:
    # Compare against a dummy hash when the id is unknown, so timing does not tell ids apart.
    expected = stored.secret_hash if stored else "0" * 64
    if not hmac.compare_digest(expected, hash_secret(secret)) or stored is None:
        raise AuthenticationFailed("Invalid API key.")
    return stored.principal


def stored_key(
    key_id: str,
    name: str,
    role: str,
    secret_hash: str,
    allowed_routes: list[str] | None,
    limits: dict[str, object] | None = None,
    revoked_at: datetime | None = None,
    allowed_tiers: list[str] | None = None,
) -> StoredKey | None:
    if revoked_at is not None:
        return None
    routes = frozenset(allowed_routes) if allowed_routes is not None else None
    tiers = frozenset(allowed_tiers) if allowed_tiers is not None else None
    principal = Principal(
        key_id, name, Role(role), routes, KeyLimits.from_json(limits), allowed_tiers=tiers
    )
    return StoredKey(principal, secret_hash)
