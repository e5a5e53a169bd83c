"""Authentication settings of a service that serves an API (prefix CHANGEGATE_AUTH_)."""

from __future__ import annotations

from typing import Self

from changegate.core.auth.principal import Role
from changegate.core.settings import ENV_PREFIX, SECRETS_DIR
from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Asymmetric algorithms only: never `none`, never an HMAC secret confused with a public key.
SAFE_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class GrantConfig(BaseModel):
    role: Role
    queues: list[str] | None = Field(None, description="only these review queues (default: all)")
    kinds: list[str] | None = Field(None, description="only these proposal kinds (default: all)")


class AuthSettings(BaseSettings):
    """OIDC bearer JWTs, changegate API tokens, or both; a service with neither refuses to start."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", secrets_dir=SECRETS_DIR)

    auth_api_tokens: bool = Field(
        False,
        description="accept API tokens made with `changegate tokens create` (kept hashed in PostgreSQL)",
    )
    auth_token_cache_seconds: float = Field(
        5,
        ge=0,
        le=60,
        description="how long a process keeps an API token it checked (saving a database lookup per "
        "request): a revoked token stops working within this many seconds; 0: checked on every request",
    )
    auth_oidc_issuer: str | None = Field(None, description="OIDC issuer URL; JWTs must carry it as iss")
    auth_oidc_audience: str | None = Field(None, description="the aud JWTs must carry (required with OIDC)")
    auth_oidc_jwks_url: str | None = Field(
        None, description="JWKS URL (default: the issuer's /.well-known/openid-configuration jwks_uri)"
    )
    auth_oidc_algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"], description="allowed JWT algorithms"
    )
    auth_oidc_identity_claim: str = Field("email", description="the claim naming the principal")
    auth_oidc_roles_claim: str = Field("groups", description="the claim listing roles or groups")
    auth_oidc_role_map: dict[str, GrantConfig] = Field(
        default_factory=dict,
        description="a value of the roles claim -> a grant (role and optional scopes); the values "
        "viewer, reviewer and admin grant themselves",
    )
    auth_oidc_leeway_seconds: int = Field(30, ge=0, le=300, description="clock skew allowed on exp/nbf")
    auth_oidc_jwks_cache_seconds: int = Field(300, ge=10, description="JWKS cache lifetime")
    auth_oidc_jwks_min_refetch_seconds: float = Field(
        10, ge=0, description="an unknown key id refetches the JWKS (rotation), at most this often"
    )

    @model_validator(mode="after")
    def _safe(self) -> Self:
        unsafe = sorted(set(self.auth_oidc_algorithms) - SAFE_ALGORITHMS)
        if unsafe:
            raise ValueError(f"auth_oidc_algorithms: {', '.join(unsafe)} not allowed (asymmetric only)")
        if self.auth_oidc_issuer and not self.auth_oidc_audience:
            raise ValueError("auth_oidc_audience is required with auth_oidc_issuer")
        return self

    @property
    def configured(self) -> bool:
        return self.auth_api_tokens or self.auth_oidc_issuer is not None

    def require_configured(self, service: str) -> None:
        if not self.configured:
            raise SystemExit(
                f"{service}: no authentication configured. Set CHANGEGATE_AUTH_OIDC_ISSUER and "
                "CHANGEGATE_AUTH_OIDC_AUDIENCE (OIDC), or CHANGEGATE_AUTH_API_TOKENS=true and create tokens "
                "with `changegate tokens create` (or both)."
            )
