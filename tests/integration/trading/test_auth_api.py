"""Register, login, logout and /me over HTTP; every bad token is a 401; revocation with the
database alone and with Redis (also after Redis lost its data or is down)."""

from __future__ import annotations

import base64
import json
import logging
import time

import jwt
import pytest
from sqlalchemy import update

from stockex import auth
from stockex.models import User

REAL_HASH_PASSWORD = auth.hash_password  # taken before the cheap-hashing fixture patches it
PASSWORD = "password-123"


def register(client, name: str, password: str = PASSWORD, **extra):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/auth/register",
                       json={"username": name, "password": password, **extra})


def login(client, name: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/auth/login", json={"username": name, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_register_login_me_logout(client) -> None:  # type: ignore[no-untyped-def]
    created = register(client, "alice", email="alice@example.com")
    assert created.status_code == 201
    assert created.get_json() == {"id": created.get_json()["id"], "username": "alice",
                                  "role": "user"}
    response = login(client, "alice")
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    me = client.get("/api/v1/me", headers=bearer(body["access_token"]))
    assert me.get_json() == {"id": created.get_json()["id"], "username": "alice",
                             "role": "user", "email": "alice@example.com"}
    balances = client.get("/api/v1/balances", headers=bearer(body["access_token"])).get_json()
    assert balances == [{"asset": a, "available": "0", "locked": "0"}
                        for a in ("ASA", "BTC", "VND", "XU")]
    assert client.post("/api/v1/auth/logout",
                       headers=bearer(body["access_token"])).status_code == 204
    again = client.get("/api/v1/me", headers=bearer(body["access_token"]))
    assert again.status_code == 401
    assert again.get_json()["error"]["code"] == "token_revoked"
    fresh = login(client, "alice").get_json()["access_token"]
    assert client.get("/api/v1/me", headers=bearer(fresh)).status_code == 200


@pytest.mark.parametrize(("name", "password", "email", "code"), [
    ("ab", "password-123", None, "invalid_username"),
    ("Alice", "password-123", None, "invalid_username"),
    ("a" * 33, "password-123", None, "invalid_username"),
    ("al ice", "password-123", None, "invalid_username"),
    ("alice\n", "password-123", None, "invalid_username"),  # $ would match before it
    ("alice", "short", None, "invalid_password"),
    ("alice", 12345678, None, "invalid_password"),
    ("alice", "password-123", "not-an-email", "invalid_email"),
    ("alice", "password-123", "a@b.cc\n", "invalid_email"),
])
def test_register_validation(client, name, password, email, code) -> None:  # type: ignore[no-untyped-def]
    response = register(client, name, password, email=email)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code


def test_usernames_are_unique_and_system_names_reserved(client) -> None:  # type: ignore[no-untyped-def]
    assert register(client, "bob.b-1_").status_code == 201
    for name in ("bob.b-1_", "fees", "admin"):
        response = register(client, name)
        assert response.status_code == 409
        assert response.get_json()["error"]["code"] == "username_taken"
    # A reserved name is not "taken" by anyone: the message says what it is.
    assert register(client, "admin").get_json()["error"]["message"] == (
        "username 'admin' is reserved (admin, fees, root, system are); choose another")


def test_unknown_fields_are_refused_not_ignored(client, database, settings) -> None:  # type: ignore[no-untyped-def]
    """{"role": "admin"} at register must not look as if it had set something."""
    response = client.post("/api/v1/auth/register", json={
        "username": "mallory", "password": "password-123", "role": "admin"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "unknown_field"
    assert response.get_json()["error"]["details"] == {"fields": ["role"]}
    assert register(client, "mallory").status_code == 201  # nothing was created before
    response = client.post("/api/v1/auth/login", json={
        "username": "mallory", "password": "password-123", "remember": True})
    assert response.get_json()["error"]["code"] == "unknown_field"
    admin = auth.create_user(database, settings, "boss", "password-123", role="admin")
    token = auth.issue_token(settings, admin.id, admin.role)
    response = client.post("/api/v1/admin/deposits", headers=bearer(token), json={
        "username": "mallory", "asset": "XU", "amount": "1", "note": "gift"})
    assert response.status_code == 400
    assert response.get_json()["error"]["details"] == {"fields": ["note"]}


def test_a_lone_surrogate_escape_is_invalid_json_not_a_500(client, database, settings) -> None:  # type: ignore[no-untyped-def]
    """'\\ud800' parses in Python but cannot be UTF-8: it failed the password hash or the SQL
    parameter with a 500 (and a Slack alert), from anyone, before a token was even asked."""
    admin = auth.create_user(database, settings, "boss", "password-123", role="admin")
    token = auth.issue_token(settings, admin.id, admin.role)
    for path, body, headers in (
        ("/api/v1/auth/register", '{"username": "eve", "password": "abc\\ud800defgh"}', {}),
        ("/api/v1/auth/register",
         '{"username": "eve", "password": "password-123", "email": "\\uDFFF@x.io"}', {}),
        ("/api/v1/auth/login", '{"username": "boss", "password": "abc\\ud800defgh"}', {}),
        ("/api/v1/auth/login", '{"username": "\\ud800", "password": "password-123"}', {}),
        ("/api/v1/admin/deposits", '{"username": "\\ud800", "asset": "XU", "amount": "1"}',
         bearer(token)),
    ):
        response = client.post(path, data=body, headers=headers, content_type="application/json")
        assert response.status_code == 400, (path, body, response.get_json())
        assert response.get_json()["error"]["code"] == "invalid_json"
    assert login(client, "eve").status_code == 401  # nothing was created
    # A surrogate pair is one real character (U+1F600): taken as it is.
    response = client.post("/api/v1/auth/register", content_type="application/json",
                           data='{"username": "eve", "password": "pass-\\ud83d\\ude00-123"}')
    assert response.status_code == 201
    assert login(client, "eve", "pass-\U0001f600-123").status_code == 200


def test_login_failures_are_all_the_same_401(client) -> None:  # type: ignore[no-untyped-def]
    register(client, "carol")
    # Other letter case and trailing blanks are other names on MySQL too (its collation
    # would find carol for both)
    for name, password in (("carol", "wrong-password"), ("nobody", "password-123"),
                           ("fees", "password-123"), ("CAROL", PASSWORD), ("carol ", PASSWORD)):
        response = login(client, name, password)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "invalid_credentials"
    response = client.post("/api/v1/auth/login", json={"username": ["x"], "password": None})
    assert response.status_code == 401


def test_passwords_are_scrypt_hashed_and_never_logged(  # type: ignore[no-untyped-def]
    client, database, caplog, monkeypatch
) -> None:
    """Through the routes with production's hashing (the conftest's cheap one switched back)."""
    from sqlalchemy import select

    from stockex.models import User

    monkeypatch.setattr(auth, "hash_password", REAL_HASH_PASSWORD)
    caplog.set_level(logging.DEBUG)
    secret = "correct-horse-battery"
    assert register(client, "dave", secret).status_code == 201
    assert login(client, "dave", secret).status_code == 200
    assert login(client, "dave", secret + "x").status_code == 401
    assert secret not in caplog.text
    with database.read() as session:
        stored = session.scalar(select(User.password_hash).where(User.username == "dave"))
    assert secret not in stored and stored.startswith("scrypt:32768:8:1$")


def test_production_hash_is_werkzeug_default_scrypt() -> None:
    """The other tests hash cheaply (see conftest); production uses werkzeug's scrypt."""
    from werkzeug.security import check_password_hash

    hashed = REAL_HASH_PASSWORD("password-123")
    assert hashed.startswith("scrypt:32768:8:1$")
    assert check_password_hash(hashed, "password-123")


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens(user_id: int, secret: str) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": str(user_id), "role": "user", "iat": now, "exp": now + 600, "jti": "j1"}
    good = jwt.encode(claims, secret, algorithm="HS256")
    header, _, signature = good.split(".")
    return {
        "expired": jwt.encode({**claims, "iat": now - 700, "exp": now - 100}, secret,
                              algorithm="HS256"),
        "tampered": f"{header}.{_b64({**claims, 'role': 'admin'})}.{signature}",
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "wrong_key": jwt.encode(claims, "a-different-secret-key-of-sufficient-len",
                                algorithm="HS256"),
        "hs512": jwt.encode(claims, secret + "-" * 40, algorithm="HS512"),
        "garbage": "not.a.token",
    }


@pytest.mark.parametrize("kind", ["expired", "tampered", "alg_none", "wrong_key", "hs512",
                                  "garbage"])
def test_bad_tokens_get_401(client, settings, kind: str) -> None:  # type: ignore[no-untyped-def]
    user_id = register(client, "erin").get_json()["id"]
    token = bad_tokens(user_id, settings.secret_key)[kind]
    for method, path in (("get", "/api/v1/me"), ("get", "/api/v1/balances"),
                         ("post", "/api/v1/orders"), ("post", "/api/v1/auth/logout")):
        response = getattr(client, method)(path, headers=bearer(token), json={})
        assert response.status_code == 401, (kind, path)
        assert response.get_json()["error"]["code"] in ("invalid_token", "token_expired")


def test_a_token_whose_user_does_not_exist_gets_401(client, settings) -> None:  # type: ignore[no-untyped-def]
    """Signed with our key, for a user id not in the database (a database reset while the
    token lived): 401, never a 500 from the accounts' foreign key, nor a zero balance."""
    token = auth.issue_token(settings, 998, "user")
    order = {"market": "asaxu", "side": "buy", "type": "limit", "price": "100", "amount": "1",
             "time_in_force": "GTC"}
    for method, path, body in (("get", "/api/v1/me", None), ("get", "/api/v1/balances", None),
                               ("post", "/api/v1/orders", order),
                               ("post", "/api/v1/orders", {**order, "side": "sell"})):
        response = getattr(client, method)(path, headers=bearer(token), json=body)
        assert response.status_code == 401, (path, response.get_json())
        error = response.get_json()["error"]
        assert (error["code"], error["message"]) == (
            "invalid_token", "the token's user does not exist")


def test_admin_routes_read_the_role_from_the_database(client, database, settings) -> None:  # type: ignore[no-untyped-def]
    """A signed admin token for a user that is gone, or no longer an admin, moves no money."""
    bob = register(client, "bob").get_json()["id"]
    body = {"username": "bob", "asset": "XU", "amount": "5"}
    ghost = auth.issue_token(settings, 997, "admin")
    response = client.post("/api/v1/admin/deposits", headers=bearer(ghost), json=body)
    assert response.status_code == 401
    assert response.get_json()["error"]["message"] == "the token's user does not exist"
    demoted = auth.create_user(database, settings, "exadmin", "password-123", role="admin")
    token = auth.issue_token(settings, demoted.id, "admin")
    assert client.post("/api/v1/admin/deposits", headers=bearer(token),
                       json=body).status_code == 200
    with database.engine.begin() as conn:
        conn.execute(update(User).where(User.id == demoted.id).values(role="user"))
    response = client.post("/api/v1/admin/deposits", headers=bearer(token), json=body)
    assert response.status_code == 403
    balances = client.get("/api/v1/balances", headers=bearer(
        auth.issue_token(settings, bob, "user"))).get_json()
    assert {b["asset"]: b["available"] for b in balances}["XU"] == "5"  # credited once


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "Basic abc", "token abc"])
def test_missing_or_malformed_header(client, header: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/api/v1/me", headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "missing_token"


def test_a_token_pasted_with_its_bearer_prefix_is_told_so(client) -> None:  # type: ignore[no-untyped-def]
    """Swagger UI's "Authorize" dialog (bearer scheme) puts "Bearer " before what is pasted;
    pasting "Bearer eyJ..." (login answers token_type "Bearer") sent "Bearer Bearer eyJ...",
    answered only "the token is not valid", as if the token itself were bad."""
    register(client, "dora")
    token = login(client, "dora").get_json()["access_token"]
    for header in (f"Bearer Bearer {token}", f"Bearer bearer  {token}"):
        response = client.get("/api/v1/me", headers={"Authorization": header})
        assert response.status_code == 401
        assert response.get_json()["error"] == {
            "code": "invalid_token",
            "message": "the Authorization header says 'Bearer' twice: send 'Bearer <token>' "
                       "(in Swagger UI's Authorize dialog, paste the token alone)",
            "details": {},
        }
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200


def test_admin_routes_need_the_admin_role(client, database, settings) -> None:  # type: ignore[no-untyped-def]
    user = register(client, "frank").get_json()
    admin = auth.create_user(database, settings, "boss", "password-123", role="admin")
    body = {"username": "frank", "asset": "XU", "amount": "5"}
    as_user = client.post("/api/v1/admin/deposits", json=body,
                          headers=bearer(login(client, "frank").get_json()["access_token"]))
    assert as_user.status_code == 403
    assert as_user.get_json()["error"]["code"] == "forbidden"
    token = auth.issue_token(settings, admin.id, admin.role)
    response = client.post("/api/v1/admin/deposits", json=body, headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json() == {"username": "frank", "asset": "XU", "available": "5",
                                   "locked": "0"}
    del user


# ------------------------------------------------------------------------- with Redis


@pytest.fixture
def redis_app(database, redis_url, make_settings):  # type: ignore[no-untyped-def]
    from stockex.api import create_app

    return create_app(make_settings(database.url, redis={"url": redis_url}), db=database)


def test_revocation_in_redis_survives_redis_losing_its_data(redis_app, redis_url) -> None:  # type: ignore[no-untyped-def]
    import redis

    client = redis_app.test_client()
    register(client, "gina")
    token = login(client, "gina").get_json()["access_token"]
    other = login(client, "gina").get_json()["access_token"]
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    store = redis.Redis.from_url(redis_url)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert store.zscore("stockex:revoked-tokens", jti) is not None
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
    store.flushdb()  # a Redis restart without persistence
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(other)).status_code == 200
    # re-filled from the table, with the member saying so
    assert store.zrange("stockex:revoked-tokens", 0, -1) == [
        jti.encode(), b"table-loaded"]


def test_revocations_kept_by_an_older_version_still_count_after_the_upgrade(  # type: ignore[no-untyped-def]
    redis_app, redis_url
) -> None:
    """Before the sorted set, each revocation was a key of its own under the marker
    ``revoked-loaded``: after an upgrade the set is filled from the table first."""
    import redis

    client = redis_app.test_client()
    register(client, "greta")
    token = login(client, "greta").get_json()["access_token"]
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    store = redis.Redis.from_url(redis_url)
    store.delete("stockex:revoked-tokens")  # as it was then
    store.set("stockex:revoked-loaded", b"1")
    store.set("stockex:revoked:some-jti", b"1", ex=3600)
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401


@pytest.mark.parametrize("policy", ["volatile-ttl", "volatile-lru", "allkeys-lru"])
def test_a_full_redis_evicts_cached_answers_never_a_revocation(  # type: ignore[no-untyped-def]
    redis_app, redis_url, policy
) -> None:
    """docker-compose.yml caps Redis's memory and lets it evict keys with a TTL (cached
    answers, rate-limit counters). A revocation must not be among them: a revoked token would
    work again. volatile-ttl evicts the nearest expiry first, and a revocation expiring with
    its token (one hour) before a settled candles page (a day) went first. A policy that
    evicts any key may take the revocations, but all of them with their marker: the table
    fills them in again."""
    import redis

    store = redis.Redis.from_url(redis_url)
    saved = store.config_get("maxmemory*")
    client = redis_app.test_client()
    register(client, "gwen")
    token = login(client, "gwen").get_json()["access_token"]
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
    evicted_before = store.info("stats")["evicted_keys"]
    try:
        store.config_set("maxmemory-policy", policy)
        store.config_set("maxmemory", str(store.info("memory")["used_memory"] + 2_000_000))
        for i in range(100):  # 10 MB of cached answers into a 2 MB margin
            store.set(f"stockex:cache-fill:{i}", b"x" * 100_000, ex=86_400)
        assert store.info("stats")["evicted_keys"] - evicted_before > 50
        assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
        fresh = login(client, "gwen").get_json()["access_token"]
        assert client.get("/api/v1/me", headers=bearer(fresh)).status_code == 200
    finally:
        store.config_set("maxmemory", saved["maxmemory"])
        store.config_set("maxmemory-policy", saved["maxmemory-policy"])


def test_revocation_while_redis_is_down(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    from stockex.api import create_app

    up = create_app(make_settings(database.url), db=database).test_client()
    register(up, "hank")
    token = login(up, "hank").get_json()["access_token"]
    assert up.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    down = create_app(make_settings(database.url, redis={"url": "redis://127.0.0.1:1/0"}),
                      db=database).test_client()
    # Redis unreachable: the table answers
    assert down.get("/api/v1/me", headers=bearer(token)).status_code == 401
    fresh = login(down, "hank").get_json()["access_token"]
    assert down.get("/api/v1/me", headers=bearer(fresh)).status_code == 200
    # a logout that cannot reach Redis fails and leaves the token valid, rather than lying
    response = down.post("/api/v1/auth/logout", headers=bearer(fresh))
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "revocation_unavailable"
    assert up.get("/api/v1/me", headers=bearer(fresh)).status_code == 200
