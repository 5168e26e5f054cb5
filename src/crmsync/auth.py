"""Bearer JWTs (HS256), compatible with the customer's Supabase access tokens.

A token must be signed with `JWT_SECRET_KEY` and carry `sub` and `exp`; an `aud` claim, when
present, must be `authenticated` (Supabase's audience). There is no static development token and
no default secret: `serve` generates a random secret on first start and keeps it in
`<state dir>/secret` (mode 0600), which `crmsync token` reads to mint short-lived tokens.

A secret shorter than 32 bytes is refused (HS256 is only as strong as its key). When
`CRMSYNC_JWT_ISSUER` / `CRMSYNC_JWT_AUDIENCE` are set, a token's `iss` must equal the issuer and
its `aud` must name the audience. A `scope` claim limits what a token may do (`read`: GET only);
a token without one has full power, as the customer's Supabase tokens have.
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

from crmsync.settings import MIN_JWT_SECRET_BYTES, Settings

ALGORITHM = "HS256"
AUDIENCE = "authenticated"
SECRET_FILE = "secret"
# Scopes a token may carry (space-separated, as OAuth's `scope` claim). `write` implies `read`.
READ = "read"
WRITE = "write"
# Methods that only read: every other one changes something and needs `write`.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class AuthError(Exception):
    """A token was refused; the message is safe to return to the caller."""


class WeakSecret(ValueError):
    """The signing secret is too short to be safe; the message says how to make a good one."""


class ScopeError(Exception):
    """A valid token whose scope does not allow this request; the message is safe to return."""


@dataclass(frozen=True, slots=True)
class User:
    sub: str
    claims: dict[str, Any]


def secret_path(settings: Settings) -> Path:
    return settings.state_dir / SECRET_FILE


def check_secret_length(secret: str, source: str = "JWT_SECRET_KEY") -> None:
    """Refuse a signing secret shorter than `MIN_JWT_SECRET_BYTES` (UTF-8 bytes)."""
    length = len(secret.encode())
    if length < MIN_JWT_SECRET_BYTES:
        raise WeakSecret(
            f"{source} is {length} bytes long; it must be at least {MIN_JWT_SECRET_BYTES} bytes. "
            "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )


def load_secret(settings: Settings) -> str | None:
    """The signing secret: `JWT_SECRET_KEY`, else the generated one on disk, else None."""
    if settings.jwt_secret_key is not None:
        value = settings.jwt_secret_key.get_secret_value()
        check_secret_length(value)
        return value
    path = secret_path(settings)
    if path.exists():
        value = path.read_text().strip()
        if value:
            check_secret_length(value, str(path))
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


def mint_token(
    secret: str,
    sub: str,
    ttl: dt.timedelta,
    now: dt.datetime | None = None,
    *,
    scope: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """A signed token; `scope` (e.g. `read`) limits it, `issuer`/`audience` as configured."""
    issued = now or dt.datetime.now(dt.UTC)
    claims: dict[str, Any] = {
        "sub": sub,
        "aud": audience or AUDIENCE,
        "role": AUDIENCE,
        "iat": int(issued.timestamp()),
        "exp": int((issued + ttl).timestamp()),
    }
    if scope is not None:
        claims["scope"] = scope
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(
    token: str, secret: str, *, issuer: str | None = None, audience: str | None = None
) -> User:
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
    check_issuer_and_audience(claims, issuer, audience)
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("Token 'sub' claim must be a non-empty string")
    return User(sub=sub, claims=claims)


def check_issuer_and_audience(
    claims: dict[str, Any], issuer: str | None, audience: str | None
) -> None:
    """`iss` must be `issuer` when one is configured; `aud` must name `audience` when one is
    configured (then it is required), else, when present, Supabase's `authenticated`."""
    if issuer is not None and claims.get("iss") != issuer:
        raise AuthError(f"Token issuer must be {issuer!r}")
    claimed = claims.get("aud")
    if claimed is None and audience is None:
        return
    audiences = claimed if isinstance(claimed, list) else [claimed]
    expected = audience or AUDIENCE
    if expected not in audiences:
        raise AuthError(f"Token audience must be {expected!r}")


def token_scopes(claims: dict[str, Any]) -> frozenset[str] | None:
    """The scopes a token grants, or None when it has no `scope` claim (full power)."""
    scope = claims.get("scope")
    if scope is None:
        return None
    words = scope.split() if isinstance(scope, str) else scope if isinstance(scope, list) else []
    return frozenset(word for word in words if isinstance(word, str))


def check_scope(user: User, method: str) -> None:
    """Raise `ScopeError` unless the token's scope allows a request with this HTTP method."""
    scopes = token_scopes(user.claims)
    if scopes is None or WRITE in scopes:
        return
    if method.upper() in READ_METHODS:
        if READ in scopes:
            return
        raise ScopeError(f"This token's scope grants no access: it needs {READ!r} or {WRITE!r}")
    raise ScopeError(
        f"This token may only read (scope {READ!r}): changing data needs a token without a "
        f"scope or with {WRITE!r}, e.g. from `crmsync token`"
    )


_TTL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> dt.timedelta:
    """`90`, `90s`, `15m`, `1h`, `7d` -> a positive timedelta."""
    match = _TTL.match(text.lower())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"invalid TTL {text!r}: use a positive number with s, m, h or d (e.g. 1h)")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
