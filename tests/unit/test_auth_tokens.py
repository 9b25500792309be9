"""Token issue and verification without I/O: every way a token can be wrong is refused."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from stockex import auth
from stockex.config import settings_from_mapping

SECRET = "unit-test-secret-key-that-is-long-enough-000"
SETTINGS = settings_from_mapping({"secret_key": SECRET, "api": {"jwt_ttl_seconds": 600}})


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(**changes: object) -> dict:
    now = int(time.time())
    base = {"sub": "7", "role": "user", "iat": now, "exp": now + 600, "jti": "abc123"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_issued_token_round_trips() -> None:
    token = auth.issue_token(SETTINGS, 7, "admin")
    principal = auth.decode_token(SETTINGS, token)
    assert (principal.user_id, principal.role) == (7, "admin")
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert set(decoded) == {"sub", "role", "iat", "exp", "jti"}
    assert decoded["exp"] - decoded["iat"] == 600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert auth.decode_token(SETTINGS, auth.issue_token(SETTINGS, 7, "user")).jti != principal.jti


def refused(token: str, code: str = "invalid_token") -> None:
    with pytest.raises(auth.Unauthorized) as caught:
        auth.decode_token(SETTINGS, token)
    assert caught.value.status == 401
    assert caught.value.code == code


def test_expired() -> None:
    refused(jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256"),
            "token_expired")


def test_tampered_payload() -> None:
    header, _payload, signature = auth.issue_token(SETTINGS, 7, "user").split(".")
    refused(f"{header}.{b64(claims(role='admin'))}.{signature}")


def test_alg_none() -> None:
    refused(f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}.")
    refused(jwt.encode(claims(), None, algorithm="none"))


def test_wrong_key_and_other_algorithms() -> None:
    refused(jwt.encode(claims(), "another-secret-key-of-plenty-length-0000", algorithm="HS256"))
    refused(jwt.encode(claims(), SECRET + "x" * 40, algorithm="HS512"))


@pytest.mark.parametrize("missing", ["sub", "role", "iat", "exp", "jti"])
def test_missing_claims(missing: str) -> None:
    refused(jwt.encode(claims(**{missing: None}), SECRET, algorithm="HS256"))


@pytest.mark.parametrize("bad", [{"sub": "x"}, {"role": "root"}, {"role": "system"},
                                 # another script's 1; beyond any BIGINT user id
                                 {"sub": "\u0661"}, {"sub": "9" * 30}])
def test_bad_claim_values(bad: dict) -> None:
    refused(jwt.encode(claims(**bad), SECRET, algorithm="HS256"))


def test_a_token_signed_on_a_machine_whose_clock_runs_ahead_is_accepted() -> None:
    # Signed by another API machine a little ahead: usable here at once (PyJWT alone refuses
    # an iat even a millisecond in the future), but not one from a clock far ahead.
    now = int(time.time())
    ahead = jwt.encode(claims(iat=now + 5, exp=now + 605), SECRET, algorithm="HS256")
    assert auth.decode_token(SETTINGS, ahead).user_id == 7
    refused(jwt.encode(claims(iat=now + auth.CLOCK_SKEW_SECONDS + 5, exp=now + 3600), SECRET,
                       algorithm="HS256"))
    refused(jwt.encode(claims(iat="soon"), SECRET, algorithm="HS256"))
    refused(jwt.encode(claims(iat=True), SECRET, algorithm="HS256"))


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "🙂.🙂.🙂"])
def test_garbage(garbage: str) -> None:
    refused(garbage)


def test_a_token_verified_before_still_expires_and_needs_the_same_key(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    issued = int(time.time())
    token = jwt.encode(claims(iat=issued, exp=issued + 2), SECRET, algorithm="HS256")
    assert auth.decode_token(SETTINGS, token).user_id == 7  # verified and remembered
    assert auth.decode_token(SETTINGS, token).user_id == 7  # answered from memory
    monkeypatch.setattr(auth.time, "time", lambda: issued + 2.0)  # exp <= now: expired
    refused(token, "token_expired")
    other = settings_from_mapping({"secret_key": "another-secret-key-of-plenty-length-0000"})
    monkeypatch.setattr(auth.time, "time", lambda: issued + 1.0)
    with pytest.raises(auth.Unauthorized):
        auth.decode_token(other, token)  # remembered under SECRET only
