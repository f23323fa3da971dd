"""Token verification: HS256, RS256 and ES256 with a public key or JWKS, and the attacks on them."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from notifier.connection.auth import TokenRejected, TokenVerifier
from tests.support import SECRET, make_settings

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_pem(key: Any) -> str:
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 60, **extra}


async def test_hs256_token_gives_identity_and_grants() -> None:
    verifier = TokenVerifier(make_settings())
    identity = await verifier.verify(jwt.encode(claims(topics=["news.#"]), SECRET, algorithm="HS256"))
    assert identity.user == "alice"
    assert identity.grants.allows("news.sport")
    assert not identity.grants.allows("user.bob")


@pytest.mark.parametrize(("key", "algorithm"), [(RSA_KEY, "RS256"), (EC_KEY, "ES256")])
async def test_public_key_tokens(key: Any, algorithm: str) -> None:
    verifier = TokenVerifier(make_settings(jwt_secret="", jwt_public_key=public_pem(key)))
    identity = await verifier.verify(jwt.encode(claims(), key, algorithm=algorithm))
    assert identity.user == "alice"


async def test_algorithm_confusion_public_key_as_hmac_secret_is_refused() -> None:
    pem = public_pem(RSA_KEY)
    verifier = TokenVerifier(make_settings(jwt_secret="", jwt_public_key=pem))
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = b64(hmac.new(pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(TokenRejected, match="not configured"):
        await verifier.verify(f"{header}.{payload}.{signature}")


async def test_alg_none_is_refused() -> None:
    verifier = TokenVerifier(make_settings())
    with pytest.raises(TokenRejected, match="not accepted"):
        await verifier.verify(jwt.encode(claims(), None, algorithm="none"))  # type: ignore[arg-type]


async def test_algorithm_outside_the_allow_list_is_refused() -> None:
    verifier = TokenVerifier(make_settings(jwt_algorithms=["RS256"], jwt_public_key=public_pem(RSA_KEY)))
    with pytest.raises(TokenRejected, match="not accepted"):
        await verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256"))


async def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = TokenVerifier(make_settings(jwt_audience="notifier", jwt_issuer="https://auth.example.com"))
    good = jwt.encode(claims(aud="notifier", iss="https://auth.example.com"), SECRET, algorithm="HS256")
    assert (await verifier.verify(good)).user == "alice"
    for bad in (claims(aud="other", iss="https://auth.example.com"), claims(aud="notifier", iss="evil"), claims()):
        with pytest.raises(TokenRejected):
            await verifier.verify(jwt.encode(bad, SECRET, algorithm="HS256"))


async def test_a_token_naming_an_audience_is_refused_when_none_is_configured() -> None:
    verifier = TokenVerifier(make_settings())
    with pytest.raises(TokenRejected, match="audience"):
        await verifier.verify(jwt.encode(claims(aud="some-other-service"), SECRET, algorithm="HS256"))
    assert (await verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256"))).user == "alice"


async def test_token_lifetime_is_bounded() -> None:
    verifier = TokenVerifier(make_settings(jwt_max_lifetime_s=3600))
    now = int(time.time())
    assert (await verifier.verify(jwt.encode(claims(exp=now + 3500), SECRET, algorithm="HS256"))).user == "alice"
    for too_long in (claims(exp=now + 7200), claims(iat=now - 3000, exp=now + 1000), claims(exp=1e300)):
        with pytest.raises(TokenRejected, match=r"lifetime|exp"):
            await verifier.verify(jwt.encode(too_long, SECRET, algorithm="HS256"))


async def test_a_small_clock_leeway_is_allowed_by_default() -> None:
    verifier = TokenVerifier(make_settings())
    just_expired = jwt.encode(claims(exp=int(time.time()) - 2), SECRET, algorithm="HS256")
    assert (await verifier.verify(just_expired)).user == "alice"
    strict = TokenVerifier(make_settings(jwt_leeway_s=0))
    with pytest.raises(TokenRejected):
        await strict.verify(just_expired)


async def test_expired_token_is_flagged_expired() -> None:
    verifier = TokenVerifier(make_settings())
    with pytest.raises(TokenRejected) as rejected:
        await verifier.verify(jwt.encode(claims(exp=int(time.time()) - 30), SECRET, algorithm="HS256"))
    assert rejected.value.expired


async def test_too_many_patterns_are_refused() -> None:
    verifier = TokenVerifier(make_settings(max_token_patterns=2))
    with pytest.raises(TokenRejected, match="at most 2"):
        await verifier.verify(jwt.encode(claims(topics=["a", "b", "c"]), SECRET, algorithm="HS256"))


@pytest.fixture
def jwks_url() -> Iterator[str]:
    numbers = RSA_KEY.public_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(numbers))
    jwk.update({"kid": "key-1", "use": "sig", "alg": "RS256"})
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()


@pytest.mark.loopback  # the key set is served over HTTP on 127.0.0.1
async def test_jwks_url_tokens(jwks_url: str) -> None:
    verifier = TokenVerifier(make_settings(jwt_secret="", jwt_jwks_url=jwks_url))
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "key-1"})
    assert (await verifier.verify(token)).user == "alice"
    unknown_kid = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "key-2"})
    with pytest.raises(TokenRejected):
        await verifier.verify(unknown_kid)
