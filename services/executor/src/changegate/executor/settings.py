from __future__ import annotations

from typing import Literal

from changegate.core.settings import CommonSettings
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict


class ExecutorSettings(CommonSettings):
    # An empty variable is unset (Compose passes ``${HUBSPOT_TOKEN:-}``): the secrets file, if
    # any, then gives the token, and without either the executor refuses to start on HubSpot.
    model_config = SettingsConfigDict(env_ignore_empty=True)

    http_port: int = 8004
    crm: Literal["sandbox", "hubspot"] = Field(
        "sandbox", description="the CRM approved changes go to: the sandbox (embedded default) or HubSpot"
    )
    hubspot_token: SecretStr | None = Field(None, description="a HubSpot private app's access token (secret)")
    hubspot_base_url: str = Field(
        "https://api.hubapi.com", description="HubSpot's API (a simulator in tests)"
    )
    hubspot_requests_per_window: int = Field(
        190,
        ge=1,
        description="client-side rate limit: requests per window (HubSpot private apps: 190 / 10 s)",
    )
    hubspot_window_seconds: float = Field(10.0, gt=0, description="the rate limit's window")
    hubspot_rate_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="this replica's share of the rate limit (HubSpot counts it per app, across every "
        "replica); unset: the share of the decisions topic's partitions it holds",
    )
    hubspot_timeout_seconds: float = Field(10.0, gt=0, description="every HubSpot call's timeout")
    hubspot_attempts: int = Field(
        5, ge=1, description="tries of one HubSpot call on 429/423/5xx/timeouts before the CRM counts as down"
    )
    breaker_failures: int = Field(3, ge=1, description="consecutive CRM outages that open the circuit")
    breaker_cooldown_seconds: float = Field(5.0, gt=0, description="how long an open circuit waits to probe")
