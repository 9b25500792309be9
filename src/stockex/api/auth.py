"""Accounts routes: ``/auth/register``, ``/auth/login``, ``/auth/logout`` and ``/me``.

Passwords are never logged; every failure is the usual JSON error (401 for any token problem).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from stockex import auth
from stockex.api import services
from stockex.api.params import json_body
from stockex.api.ratelimits import limit_login, limit_password

bp = Blueprint("auth", __name__)


@bp.post("/auth/register")
@limit_password
def register() -> tuple[Response, int]:
    """201 the new user; 400 invalid_username/invalid_password/invalid_email; 409 username_taken."""
    body = json_body(frozenset({"username", "password", "email"}))
    svc = services()
    user = auth.create_user(
        svc.db, svc.settings, body.get("username"), body.get("password"), email=body.get("email")
    )
    return jsonify({"id": user.id, "username": user.username, "role": user.role}), 201


@bp.post("/auth/login")
@limit_login  # first: what it turns away does not count against the client's address
@limit_password
def login() -> Response:
    """A bearer token for valid credentials; 401 invalid_credentials otherwise."""
    body = json_body(frozenset({"username", "password"}))
    svc = services()
    user = auth.authenticate(svc.db, body.get("username"), body.get("password"))
    token = auth.issue_token(svc.settings, user.id, user.role)
    return jsonify({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": svc.settings.api.jwt_ttl_seconds,
    })


@bp.post("/auth/logout")
@auth.requires_auth()
def logout() -> tuple[str, int]:
    """Revoke the presented token until it expires; 204."""
    svc = services()
    auth.Revocations(svc.db, svc.cache).revoke(auth.current_principal())
    return "", 204


@bp.get("/me")
@auth.requires_auth()
def me() -> Response:
    user = auth.get_user(services().db, auth.current_principal().user_id)
    return jsonify({"id": user.id, "username": user.username, "role": user.role,
                    "email": user.email})
