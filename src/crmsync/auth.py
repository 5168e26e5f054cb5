"""Bearer JWTs (HS256), compatible with the customer's Supabase access tokens.

A token must be signed with `JWT_SECRET_KEY` and carry `sub` and `exp`; an `aud` claim, when
present, must be `authenticated` (Supabase's audience). There is no static development token and
no default secret: `serve` generates a random secret on first start and keeps it in
`<state dir>/secret` (mode 0600), which `crmsync token` reads to mint short-lived tokens.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from crmsync.settings import Settings

ALGORITHM = "HS256"
AUDIENCE = "authenticated"
SECRET_FILE = "secret"


class AuthError(Exception):
    """A token was refused; the message is safe to return to the caller."""


@dataclass(frozen=True, slots=True)
class User:
    sub: str
    claims: dict[str, Any]


def secret_path(settings: Settings) -> Path:
    return settings.state_dir / SECRET_FILE


def load_secret(settings: Settings) -> str | None:
    """The signing secret: `JWT_SECRET_KEY`, else the generated one on disk, else None."""
    if settings.jwt_secret_key is not None:
        return settings.jwt_secret_key.get_secret_value()
    path = secret_path(settings)
    if path.exists():
        value = path.read_text().strip()
        return value or None
    return None


def ensure_secret(settings: Settings) -> tuple[str, Path | None]:
    """The signing secret, generating and storing one if none exists.

    Returns the secret and the path it was newly written to (None when it already existed).
    """
    existing = load_secret(settings)
    if existing is not None:
        return existing, None
    path = secret_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    # Created 0600 from the start: the secret is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value, path


def mint_token(secret: str, sub: str, ttl: dt.timedelta, now: dt.datetime | None = None) -> str:
    issued = now or dt.datetime.now(dt.UTC)
    claims = {
        "sub": sub,
        "aud": AUDIENCE,
        "role": AUDIENCE,
        "iat": int(issued.timestamp()),
        "exp": int((issued + ttl).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: str) -> User:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise AuthError("Malformed token") from exc
    if header.get("alg") != ALGORITHM:
        # Refuse `alg: none` and every algorithm we did not ask for, before any verification.
        raise AuthError("Token algorithm not allowed")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp"], "verify_aud": False},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("Token has expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise AuthError("Token signature is invalid") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"Token is missing the {exc.claim!r} claim") from exc
    except jwt.PyJWTError as exc:
        raise AuthError("Could not validate credentials") from exc
    audience = claims.get("aud")
    if audience is not None:
        audiences = audience if isinstance(audience, list) else [audience]
        if AUDIENCE not in audiences:
            raise AuthError(f"Token audience must be {AUDIENCE!r}")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("Token 'sub' claim must be a non-empty string")
    return User(sub=sub, claims=claims)


_TTL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> dt.timedelta:
    """`90`, `90s`, `15m`, `1h`, `7d` -> a positive timedelta."""
    match = _TTL.match(text.lower())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"invalid TTL {text!r}: use a positive number with s, m, h or d (e.g. 1h)")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
