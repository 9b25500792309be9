"""Users, passwords and access tokens.

* **Users**: usernames are 3-32 characters of ``[a-z0-9_.-]``; passwords at least 8 characters,
  stored only as a werkzeug scrypt hash and never logged. A new user gets an account (zero
  balance) for every asset of every configured market. ``fees`` is reserved for the system
  account that receives trading fees.
* **Tokens**: JWT signed with HS256 and ``secret_key``; claims ``sub`` (the user id as a
  string), ``role``, ``iat``, ``exp`` (``api.jwt_ttl_seconds`` later) and a random ``jti``.
  Verification pins the algorithm to HS256 (so ``alg=none`` and RS/HS confusion are refused)
  and requires every claim. An ``iat`` up to :data:`CLOCK_SKEW_SECONDS` ahead of this
  machine's clock is accepted: a token signed by another API machine whose clock runs a
  little ahead must work here at once (PyJWT alone refuses any ``iat`` in the future, even by
  a millisecond); ``exp`` is exact. Any failure is :class:`Unauthorized` (HTTP 401).
* **Revocation** (logout): the ``jti`` is refused until the token would have expired anyway.
  With Redis configured the revocation lives in Redis (one round trip per request), backed by
  the ``revoked_tokens`` table so that a Redis restart or outage never lets a revoked token
  back in: when Redis lost its data it is re-filled from the table, and while Redis is
  unreachable the table is asked directly (a logout itself then answers 503, see
  :meth:`Revocations.revoke`). Without Redis the table alone is used. In Redis the
  revocations are one sorted set (token id -> expiry) without a TTL, holding a marker member
  once it was filled from the table: the set goes whole or not at all, so whatever takes it
  (a restart without persistence, a flush, a full Redis evicting keys under any
  ``maxmemory-policy``) takes the marker too and the next check re-fills it; a full Redis
  with a ``volatile-*`` policy (docker-compose.yml) never evicts it. Expired ids leave the
  set at each logout.

``requires_auth`` is the Flask decorator for ``Authorization: Bearer <token>`` routes.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import jwt
import redis
from flask import g, request
from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from stockex.cache import KEY_PREFIX, Cache
from stockex.config import Settings
from stockex.db import Database
from stockex.errors import USER_GONE, Conflict, DomainError, InvalidInput, Unauthorized
from stockex.models import RevokedToken, User
from stockex.trading.accounts import FEE_USERNAME, all_assets, ensure_accounts

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("sub", "role", "iat", "exp", "jti")
ROLES = ("user", "admin", "system")
RESERVED_USERNAMES = frozenset({FEE_USERNAME, "system", "admin", "root"})
USERNAME_RE = re.compile(r"[a-z0-9_.-]{3,32}")
EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{1,63}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # scrypt cost does not grow with length, but a body must stay sane
#: How far ahead of this machine's clock a token's ``iat`` may be (another machine signed it).
CLOCK_SKEW_SECONDS = 60

_REVOKED_EXPIRY = select(RevokedToken.expires_at).where(RevokedToken.jti == bindparam("jti"))
#: A sorted set, token id -> expiry (epoch seconds); no TTL, so never evicted by volatile-*.
#: A new key since the revocations moved from one key each (``revoked:<jti>``, with a TTL)
#: into the set: on an upgraded deployment the first check fills it from the table.
_REVOKED_SET = KEY_PREFIX + "revoked-tokens"
#: A member of the set (never a token id: those are hex) present once the table's
#: revocations were copied in; its infinite score outlives every clean-up of expired ids.
_LOADED_MEMBER = "table-loaded"
# A hash to compare against when the user does not exist, so that a login for an unknown
# name costs as much as a wrong password (no user enumeration by timing).
_DUMMY_HASH = generate_password_hash("not-a-real-password-at-all")

F = TypeVar("F", bound=Callable[..., Any])


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    user_id: int
    role: str
    jti: str
    expires_at: int


@dataclass(frozen=True)
class UserView:
    id: int
    username: str
    role: str
    email: str | None


# --------------------------------------------------------------------------- users


def validate_username(username: object) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise InvalidInput(
            "username must be 3-32 characters of a-z, 0-9, '_', '.', '-'",
            code="invalid_username",
        )
    return username


def validate_password(password: object) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(
            f"password must be a string of {MIN_PASSWORD} to {MAX_PASSWORD} characters",
            code="invalid_password",
        )
    return password


def validate_email(email: object) -> str | None:
    if email is None or email == "":
        return None
    if not isinstance(email, str) or len(email) > 254 or not EMAIL_RE.fullmatch(email):
        raise InvalidInput("email is not a valid address", code="invalid_email")
    return email


def hash_password(password: str) -> str:
    return generate_password_hash(password, method="scrypt")


def create_user(
    db: Database,
    settings: Settings,
    username: object,
    password: object,
    *,
    email: object = None,
    role: str = "user",
) -> UserView:
    """Register a user with a zero account for every configured asset.

    Raises InvalidInput (bad name, password, email), Conflict ``username_taken`` (also for
    reserved system names).
    """
    name = validate_username(username)
    secret = validate_password(password)
    address = validate_email(email)
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
    if name in RESERVED_USERNAMES and role != "system":
        reserved = ", ".join(sorted(RESERVED_USERNAMES))
        raise Conflict(f"username {name!r} is reserved ({reserved} are); choose another",
                       code="username_taken")
    hashed = hash_password(secret)  # slow on purpose; outside the transaction

    def work(session: Session) -> UserView:
        user = User(
            username=name, email=address, password_hash=hashed, role=role,
            created_at=int(time.time()),
        )
        session.add(user)
        session.flush()
        ensure_accounts(session, [user.id], all_assets(settings))
        return UserView(user.id, user.username, user.role, user.email)

    try:
        return db.transaction(work)
    except IntegrityError:
        raise Conflict(f"username {name!r} is taken", code="username_taken") from None


def get_user(db: Database, user_id: int) -> UserView:
    with db.read() as session:
        user = session.get(User, user_id)
        if user is None:  # a token signed with our key, for a user no longer here
            raise Unauthorized(USER_GONE)
        return UserView(user.id, user.username, user.role, user.email)


def authenticate(db: Database, username: object, password: object) -> UserView:
    """The user whose password this is; Unauthorized ``invalid_credentials`` otherwise."""
    bad = Unauthorized("wrong username or password", code="invalid_credentials")
    if not isinstance(username, str) or not isinstance(password, str):
        raise bad
    with db.read() as session:
        user = session.scalar(select(User).where(User.username == username))
    # MySQL's collation ignores case and trailing blanks ("ALICE " finds alice); the name
    # must be the user's exactly, as on SQLite.
    if user is None or user.username != username or user.role == "system":
        check_password_hash(_DUMMY_HASH, password)
        raise bad
    if not check_password_hash(user.password_hash, password):
        raise bad
    return UserView(user.id, user.username, user.role, user.email)


# --------------------------------------------------------------------------- tokens


def issue_token(settings: Settings, user_id: int, role: str, *, now: int | None = None) -> str:
    issued = int(time.time()) if now is None else now
    claims = {
        "sub": str(user_id),
        "role": role,
        "iat": issued,
        "exp": issued + settings.api.jwt_ttl_seconds,
        "jti": secrets.token_hex(16),
    }
    return jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM)


#: Tokens already verified, by (signing key, token): a client sends the same token with every
#: request, and verifying it again (base64, JSON, HMAC) costs more than the rest of auth. Only
#: the expiry can change a verified token's verdict (``iat``/``nbf`` only ever get more
#: lenient), so a hit is checked against the clock exactly as PyJWT would. Revocation is not
#: cached; it is asked every time (:class:`Revocations`).
_verified: dict[tuple[str, str], Principal] = {}
_VERIFIED_MAX = 10_000


def decode_token(settings: Settings, token: str) -> Principal:
    """Verify signature (HS256 only), expiry and claims; Unauthorized on any problem."""
    key = (settings.secret_key, token)
    principal = _verified.get(key)
    if principal is None:
        principal = _verify_token(settings, token)
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()  # bounded; an evicted token is simply verified again
        _verified[key] = principal
    elif principal.expires_at <= time.time():
        raise Unauthorized("the token has expired", code="token_expired")
    return principal


def _verify_token(settings: Settings, token: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            settings.secret_key,
            algorithms=[ALGORITHM],
            options={"require": list(REQUIRED_CLAIMS), "verify_iat": False},  # checked below
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the token has expired", code="token_expired") from None
    except jwt.PyJWTError:
        raise Unauthorized("the token is not valid") from None
    iat = claims["iat"]
    if (not isinstance(iat, int) or isinstance(iat, bool)
            or iat > time.time() + CLOCK_SKEW_SECONDS):
        raise Unauthorized("the token is not valid")
    sub, role, jti = claims["sub"], claims["role"], claims["jti"]
    if not (isinstance(sub, str) and sub.isascii() and sub.isdigit() and len(sub) <= 18
            and role in ROLES and isinstance(jti, str)):
        raise Unauthorized("the token is not valid")
    if role == "system" or not 0 < len(jti) <= 64:
        raise Unauthorized("the token is not valid")
    return Principal(int(sub), role, jti, int(claims["exp"]))


class Revocations:
    """Logged-out token ids; see the module docstring for where they live."""

    def __init__(self, db: Database, cache: Cache) -> None:
        self.db = db
        self.cache = cache
        self.redis = cache.redis

    def revoke(self, principal: Principal, *, now: int | None = None) -> None:
        """Refuse ``principal``'s token from now on.

        With Redis configured, Redis is written first: if it is unreachable the logout fails
        with 503 ``revocation_unavailable`` and nothing changed (otherwise Redis, once back
        with its data, would not know this token). The table is written second; it is what
        Redis is re-filled from after it lost its data.
        """
        current = int(time.time()) if now is None else now
        if self.redis is not None:
            unavailable = DomainError(
                "cannot log out while Redis is unreachable; try again",
                code="revocation_unavailable", status=503,
            )
            if self.cache.redis_paused:  # it timed out moments ago: do not wait again
                raise unavailable
            try:
                pipe = self.redis.pipeline(transaction=True)
                pipe.zadd(_REVOKED_SET, {principal.jti: principal.expires_at})
                pipe.zremrangebyscore(_REVOKED_SET, "-inf", f"({current}")  # expired
                pipe.execute()
            except redis.RedisError as exc:
                self.cache.redis_failed(exc)
                raise unavailable from None

        def work(session: Session) -> None:
            session.execute(delete(RevokedToken).where(RevokedToken.expires_at < current))
            if session.get(RevokedToken, principal.jti) is None:
                session.add(RevokedToken(jti=principal.jti, expires_at=principal.expires_at))

        self.db.transaction(work)

    def is_revoked(self, jti: str) -> bool:
        if self.redis is not None and not self.cache.redis_paused:
            try:
                pipe = self.redis.pipeline(transaction=False)  # one round trip
                pipe.zscore(_REVOKED_SET, _LOADED_MEMBER)
                pipe.zscore(_REVOKED_SET, jti)
                loaded, expires_at = pipe.execute()
                if loaded is not None:
                    return expires_at is not None and expires_at >= int(time.time())
                return jti in self._reload_redis()
            except redis.RedisError as exc:
                self.cache.redis_failed(exc)  # and ask the table instead
        return self._in_table(jti)

    def _in_table(self, jti: str) -> bool:
        # Every authenticated request comes here when Redis is not configured: one query on
        # a pooled connection, no session.
        expires_at = self.db.first_value(_REVOKED_EXPIRY, {"jti": jti})
        return expires_at is not None and expires_at >= int(time.time())

    def _reload_redis(self) -> set[str]:  # only called with self.redis set
        """Redis lost its data (restart, flush): copy the unexpired revocations back."""
        now = int(time.time())
        with self.db.read() as session:
            rows = session.execute(
                select(RevokedToken.jti, RevokedToken.expires_at).where(
                    RevokedToken.expires_at >= now
                )
            ).all()
        loaded: dict[str, float] = {_LOADED_MEMBER: float("inf")}
        self.redis.zadd(_REVOKED_SET, {**dict(rows), **loaded})  # type: ignore[union-attr]
        return {jti for jti, _ in rows}


# --------------------------------------------------------------------------- flask


def bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("an 'Authorization: Bearer <token>' header is required",
                           code="missing_token")
    token = token.strip()
    if token[:7].lower() == "bearer ":  # "Bearer <token>" pasted where the token alone goes
        raise Unauthorized("the Authorization header says 'Bearer' twice: send 'Bearer "
                           "<token>' (in Swagger UI's Authorize dialog, paste the token alone)")
    return token


def current_principal() -> Principal:
    principal: Principal = g.stockex_principal
    return principal


def _current_role(db: Database, user_id: int) -> str | None:
    with db.read() as session:
        return session.scalar(select(User.role).where(User.id == user_id))


def requires_auth(role: str | None = None) -> Callable[[F], F]:
    """Route decorator: verify the bearer token (401) and, if given, the role (403), which
    is then read from the database too (a user removed or demoted since the token was signed
    is refused at once; the unchecked routes only ever reach the token's own user's rows).

    The verified :class:`Principal` is available as :func:`current_principal`.
    """

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from stockex.api import services

            svc = services()
            principal = decode_token(svc.settings, bearer_token())
            if Revocations(svc.db, svc.cache).is_revoked(principal.jti):
                raise Unauthorized("the token has been revoked", code="token_revoked")
            if role is not None:  # rare routes: the role as signed, then as it is now
                current = principal.role
                if current == role:
                    current = _current_role(svc.db, principal.user_id)
                    if current is None:
                        raise Unauthorized(USER_GONE)
                if current != role:
                    raise Forbidden(f"this needs the {role} role")
            g.stockex_principal = principal
            g.user_id = principal.user_id  # read by rate limits, the access log and alerts
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
