"""Authentication and authorisation shared by every API: OIDC JWTs, API tokens, roles and scopes."""

from changegate.core.auth.dependencies import (
    Admin,
    Authenticator,
    RateLimit,
    Reviewer,
    UnscopedViewer,
    Viewer,
    authenticated,
    require,
    require_unscoped,
)
from changegate.core.auth.principal import Grant, Principal, Role, normalize_identity
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
    "UnscopedViewer",
    "Viewer",
    "authenticated",
    "normalize_identity",
    "require",
    "require_unscoped",
]
