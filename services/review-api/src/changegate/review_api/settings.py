from __future__ import annotations

from typing import Self

from changegate.core.auth import AuthSettings
from changegate.core.settings import CommonSettings
from pydantic import Field, SecretStr, model_validator


class ReviewApiSettings(CommonSettings, AuthSettings):
    http_port: int = 8000
    review_workers: int = Field(
        1,
        ge=1,
        le=32,
        description="processes serving the API on the one port (one process runs Python on one core): "
        "the first also consumes the queue's topics and runs the outbox and expiry; the others serve HTTP "
        "and their own SSE streams",
    )
    review_decision_rate_limit: str = Field(
        "60/minute",
        description="decisions per reviewer identity (per replica, and per worker process); over it, "
        "429 with Retry-After",
    )
    review_min_approvals: dict[str, int] = Field(
        default_factory=dict,
        description="proposal kind -> distinct approvers required at least, whatever the route says "
        '(JSON, e.g. {"merge": 2}: four-eyes on every merge, conflict re-proposals included)',
    )
    review_public_url: str | None = Field(
        None,
        description="the URL reviewers open (https://…): the sign-in cookie is Secure under https, and "
        "OIDC sign-in returns to <this>/inbox/oidc/callback",
    )
    review_oidc_client_id: str | None = Field(
        None,
        description="the inbox's OIDC client (authorization code flow with PKCE); unset: token sign-in only",
    )
    review_oidc_client_secret: SecretStr | None = Field(None, description="for a confidential OIDC client")
    review_oidc_scopes: str = Field("openid email profile", description="scopes the inbox asks for")
    review_session_hours: int = Field(12, ge=1, le=24 * 30, description="how long a page sign-in lasts")

    @model_validator(mode="after")
    def _approvals(self) -> Self:
        bad = {k: v for k, v in self.review_min_approvals.items() if not 1 <= v <= 5}
        if bad:
            raise ValueError(f"review_min_approvals: between 1 and 5 approvers, not {bad}")
        if self.review_oidc_client_id and not (self.auth_oidc_issuer and self.review_public_url):
            raise ValueError("review_oidc_client_id needs auth_oidc_issuer and review_public_url")
        return self
