"""Ingest settings (prefix CHANGEGATE_). The generic sources' secrets are named in the sources file
and read from their own variables (or files of those names in CHANGEGATE_SECRETS_DIR)."""

from __future__ import annotations

from pathlib import Path

from changegate.core.settings import CommonSettings
from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

MIN_SECRET_LENGTH = 16


class IngestSettings(CommonSettings):
    http_port: int = 8005
    http_max_body_bytes: int = Field(
        4_194_304,
        ge=1024,
        description="webhook bodies over this are refused with 413 while read (a HubSpot request carries "
        "up to 100 events)",
    )
    public_base_url: AnyHttpUrl | None = Field(
        None,
        description="scheme://host[:port][/prefix] senders call, e.g. https://hooks.example.com: HubSpot "
        "signs the full URI it called, so set it behind a proxy or load balancer (unset: the request's "
        "own scheme and Host; X-Forwarded-* headers are never trusted)",
    )
    hubspot_client_secret: SecretStr | None = Field(
        None, description="the HubSpot app's client secret (signature v3); unset: /v1/webhooks/hubspot is 404"
    )
    hubspot_echo_source_ids: list[str] = Field(
        default_factory=list,
        description="HubSpot sourceId values of changegate's own writes (the app the executor writes "
        "with): their webhooks reach the detector marked echo, and propose nothing",
    )
    hubspot_max_age_seconds: float = Field(
        300, gt=0, description="a HubSpot request whose timestamp is further from now is refused (replay)"
    )
    ingest_sources_file: Path | None = Field(
        None,
        description="YAML file of the generic webhook sources; unset: the shipped sources.yaml, from which "
        "a source whose secret is not set is left out (in a file of yours that is an error)",
    )
    produce_timeout_seconds: float = Field(
        5.0, gt=0, description="how long a request waits for the broker's acknowledgement before a 503"
    )
    retry_after_seconds: int = Field(10, ge=1, description="Retry-After of a 503 while the broker is away")

    @field_validator("hubspot_client_secret", mode="after")
    @classmethod
    def _a_real_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        """Empty is unset (compose passes `${VAR:-}`); a short one is refused, never used as a key."""
        if secret is None or not secret.get_secret_value():
            return None
        if len(secret.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"shorter than {MIN_SECRET_LENGTH} characters: not a HubSpot client secret")
        return secret
