"""Token verification: turns a JWT into the user and grants of a connection, or says exactly why not."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import jwt

from notifier.formats.grants import Grants, validate_patterns, validate_user
from notifier.formats.topics import InvalidTopic
from notifier.settings import Settings


class TokenRejected(Exception):
    """The token cannot be used; `expired` tells an expired token from an otherwise invalid one."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for, what it may subscribe to, and until when."""

    user: str
    grants: Grants
    expires_at: float


class TokenVerifier:
    """Verifies HS256 tokens with a shared secret and RS256/ES256 with a public key or a JWKS URL."""

    def __init__(self, settings: Settings) -> None:
        settings.require_token_key()
        self._settings = settings
        self._algorithms = list(settings.jwt_algorithms)
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True) if settings.jwt_jwks_url else None

    async def verify(self, token: object) -> Identity:
        """Verify signature, `exp`, `nbf`, `aud` (a token naming an audience other than NOTIFIER_JWT_AUDIENCE,
        or any audience when none is configured, is refused), `iss` when configured, and the lifetime; return
        the identity."""
        if not isinstance(token, str) or not token:
            raise TokenRejected("token must be a non-empty string")
        algorithm = _unverified_algorithm(token)
        if algorithm not in self._algorithms:
            raise TokenRejected(f"algorithm {algorithm!r} is not accepted")
        key = await self._key_for(algorithm, token)
        settings = self._settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=settings.jwt_audience or None,
                issuer=settings.jwt_issuer or None,
                leeway=settings.jwt_leeway_s,
                # With no audience configured, PyJWT refuses any token that names one: a token minted for
                # another service is not ours to accept.
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token has expired", expired=True) from None
        except jwt.PyJWTError as error:
            raise TokenRejected(f"token rejected: {error}") from None
        return self._identity(claims)

    async def _key_for(self, algorithm: str, token: str) -> Any:
        # The key is chosen by the algorithm family, so a public key can never be used as an HMAC secret.
        if algorithm.startswith("HS"):
            if not self._settings.jwt_secret:
                raise TokenRejected(f"algorithm {algorithm} is not configured")
            return self._settings.jwt_secret
        if self._settings.jwt_public_key:
            return self._settings.jwt_public_key
        if self._jwks is not None:
            jwks = self._jwks
            try:
                signing_key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWTError as error:
                raise TokenRejected(f"no signing key for token: {error}") from None
            return signing_key.key
        raise TokenRejected(f"algorithm {algorithm} is not configured")

    def _identity(self, claims: dict[str, object]) -> Identity:
        try:
            user = validate_user(claims["sub"])
        except InvalidTopic as error:
            raise TokenRejected(f"sub: {error}") from None
        try:
            patterns = validate_patterns(claims.get("topics", []), self._settings.max_token_patterns)
        except InvalidTopic as error:
            raise TokenRejected(f"topics claim: {error}") from None
        return Identity(user=user, grants=Grants(user, patterns), expires_at=self._expiry(claims))

    def _expiry(self, claims: dict[str, object]) -> float:
        """`exp`, if the token's lifetime is within NOTIFIER_JWT_MAX_LIFETIME_S (counted from `iat` if given)."""
        expires_at = claims["exp"]
        if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)) or not math.isfinite(expires_at):
            raise TokenRejected("exp must be a number")
        issued_at = claims.get("iat")
        start = time.time()
        if isinstance(issued_at, (int, float)) and not isinstance(issued_at, bool) and math.isfinite(issued_at):
            start = min(start, float(issued_at))
        limit = self._settings.jwt_max_lifetime_s
        if expires_at - start > limit + self._settings.jwt_leeway_s:
            raise TokenRejected(f"token lifetime is over NOTIFIER_JWT_MAX_LIFETIME_S ({limit:g} s)")
        return float(expires_at)


def _unverified_algorithm(token: str) -> object:
    """The `alg` of a token's header, read without checking anything else: it only picks the key, and
    `jwt.decode` then checks the whole token strictly, this header included. Cheaper than PyJWT's own
    unverified read, which validates and decodes every segment a second time."""
    head, dot, _ = token.partition(".")
    if not dot:
        raise TokenRejected("malformed token: not enough segments")
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise TokenRejected("malformed token: the header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise TokenRejected("malformed token: the header is not a JSON object")
    return header.get("alg")


def mint_token(
    secret: str, user: str, *, topics: list[str] | None = None, ttl_s: float = 3600.0, algorithm: str = "HS256"
) -> str:
    """Sign a token for `user` with a shared secret (for `notifier token`, dev mode and tests)."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + int(ttl_s)}
    if topics:
        claims["topics"] = topics
    return jwt.encode(claims, secret, algorithm=algorithm)
