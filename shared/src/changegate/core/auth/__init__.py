"""Authentication and authorisation shared by every API: OIDC JWTs, API tokens, roles and scopes."""

from changegate.core.auth.dependencies import (
    Admin,
    Authenticator,
    RateLimit,
    Reviewer,
    Viewer,
    authenticated,
    require,
)
from changegate.core.auth.principal import Grant, Principal, Role
from changegate.core.auth.settings import AuthSettings, GrantConfig

__all__ = [
    "Admin",
    "AuthSettings",
    "Authenticator",
    "Grant",
    "GrantConfig",
    "Principal",
    "RateLimit",
    "Reviewer",
    "Role",
    "Viewer",
    "authenticated",
    "require",
]
