"""Token verification: turns a JWT into the user and grants of a connection, or says exactly why not."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import jwt

from notifier.grants import Grants, validate_patterns, validate_user
from notifier.settings import Settings
from notifier.topics import InvalidTopic


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
        """Verify signature, `exp`, `nbf` and (when configured) `aud` and `iss`; return the identity."""
        if not isinstance(token, str) or not token:
            raise TokenRejected("token must be a non-empty string")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise TokenRejected(f"malformed token: {error}") from None
        algorithm = header.get("alg")
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
                options={"require": ["exp", "sub"], "verify_aud": bool(settings.jwt_audience)},
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
        expires_at = claims["exp"]
        if not isinstance(expires_at, (int, float)):
            raise TokenRejected("exp must be a number")
        return Identity(user=user, grants=Grants(user, patterns), expires_at=float(expires_at))


def mint_token(
    secret: str, user: str, *, topics: list[str] | None = None, ttl_s: float = 3600.0, algorithm: str = "HS256"
) -> str:
    """Sign a token for `user` with a shared secret (for `notifier token`, dev mode and tests)."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + int(ttl_s)}
    if topics:
        claims["topics"] = topics
    return jwt.encode(claims, secret, algorithm=algorithm)
