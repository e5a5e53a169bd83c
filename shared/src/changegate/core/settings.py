"""Settings every service shares. Values come from the environment (prefix ``CHANGEGATE_``);
the defaults are those of the embedded dev stack (`changegate dev up`)."""

from __future__ import annotations

import os
from typing import Any, Literal

from changegate.core.signing import SigningKey, TrustedKey, Verifier
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CHANGEGATE_"
DEFAULT_KAFKA = "127.0.0.1:19092"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:15432/postgres"


# Secrets may also come as files named like their variables, lowercase (changegate_signing_key, …),
# in the directory CHANGEGATE_SECRETS_DIR names: a Kubernetes secret volume, a compose volume.
SECRETS_DIR = os.environ.get(f"{ENV_PREFIX}SECRETS_DIR") or None


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", secrets_dir=SECRETS_DIR)

    kafka_bootstrap_servers: str = Field(DEFAULT_KAFKA, description="host:port[,host:port]")
    topic_prefix: str = Field("changegate.", description="prefix of every topic name")
    kafka_enable_idempotence: bool = Field(
        False,
        description="idempotent producer; the embedded Tansu broker refuses it, turn on for Kafka",
    )
    kafka_fetch_max_wait_ms: int = Field(
        100,
        ge=0,
        description="how long the broker may hold a fetch while no records are ready; on the embedded "
        "broker 100 ms cost no latency against 15 ms and a third of the CPU (bench/e2e.py), use 500 on Kafka",
    )
    # Group timings: Tansu makes a first join wait ~the rebalance timeout and a rejoin after a
    # restart wait ~2 session timeouts (it does not act on LeaveGroup), so the embedded defaults are
    # short. On Kafka use its usual values (e.g. 45000 / 3000 / 60000).
    kafka_session_timeout_ms: int = 2_000
    kafka_heartbeat_interval_ms: int = 500
    kafka_rebalance_timeout_ms: int = 1_000
    kafka_max_poll_interval_ms: int = Field(
        300_000,
        ge=1_000,
        description="a member that does not poll for this long leaves its group; backpressure pauses "
        "partitions instead of waiting in a handler, so the loop keeps polling",
    )
    liveness_max_poll_gap_seconds: float = Field(
        300,
        gt=0,
        description="/healthz fails when a consumer loop has not polled for longer (a wedged loop)",
    )
    # Transport security to Kafka (see docs/security.md): TLS, SASL, or both.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle that signed the brokers' certificates")
    kafka_ssl_certfile: str | None = Field(None, description="client certificate (mutual TLS)")
    kafka_ssl_keyfile: str | None = Field(None, description="client certificate's private key")
    kafka_replication_factor: int = Field(1, ge=1, description="replicas of each topic it creates")
    kafka_max_batch: int = Field(500, description="max records a consumer takes per poll")
    kafka_producer_batch_bytes: int = Field(
        262_144,
        ge=16_384,
        description="bytes a producer puts in one partition's batch; a relay publishing a backlog "
        "sends one request per broker at a time, so aiokafka's 16 KiB (~6 proposals) held it back",
    )
    handler_max_attempts: int = Field(
        5, ge=1, description="attempts per message (exponential backoff) before it is dead-lettered"
    )
    # What one consumed message may hold; over a limit, it is dead-lettered with the reason.
    message_max_bytes: int = Field(1_048_576, ge=1024, description="bytes, checked before parsing")
    message_max_depth: int = Field(32, ge=4, description="nesting of JSON objects and arrays")
    message_max_string_length: int = Field(65_536, ge=256, description="characters in any one string")
    kafka_max_decompressed_batch_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1_048_576,
        description="a compressed record batch that would decompress to more is refused before it is "
        "(dead-lettered as decompression_limit); the same for every consumer of the process",
    )
    http_max_body_bytes: int = Field(
        1_048_576, ge=1024, description="request bodies over this are refused with 413 while read"
    )
    shutdown_grace_seconds: float = Field(
        15, description="how long workers may finish the message in hand after SIGTERM"
    )
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="asyncpg DSN; add ?sslmode=verify-full (and sslrootcert=…) for TLS to PostgreSQL",
    )
    database_pool_max: int = 10
    migrate_on_start: bool = Field(
        True,
        description="apply pending migrations at start; set false where services run as their own "
        "least-privileged roles and `changegate migrate` runs as the owner first (they then refuse to "
        "start on a schema that is behind)",
    )
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    signing_key: SecretStr | None = Field(
        None,
        description="'<key id>:<Ed25519 seed, base64url>' this service signs decisions or executions with "
        "(policy, review-api, detector, executor); `changegate keys generate` makes one",
    )
    trusted_keys: dict[str, TrustedKey] = Field(
        default_factory=dict,
        description="key id -> {signer, public_key}: whose signed decisions and executions to accept (JSON)",
    )
    tracing_exporter: Literal["none", "otlp"] = Field(
        "none",
        description="OpenTelemetry spans: none (default), or otlp to the collector that "
        "OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) names, over HTTP",
    )
    log_level: str = "INFO"
    log_format: str = Field("json", description="json or console")

    def signing(self, signer: str) -> SigningKey:
        """This service's signing key; a service that must sign and has none refuses to start."""
        if self.signing_key is None:
            raise SystemExit(
                f"{signer}: no signing key. Set CHANGEGATE_SIGNING_KEY ('<key id>:<seed>', from "
                "`changegate keys generate`); give its public key to the others in CHANGEGATE_TRUSTED_KEYS."
            )
        try:
            return SigningKey.parse(self.signing_key.get_secret_value(), signer)
        except ValueError as exc:
            raise SystemExit(f"{signer}: CHANGEGATE_SIGNING_KEY is not a signing key: {exc}") from exc

    def verifier(self, service: str) -> Verifier:
        """Checks signed decisions and executions; a consumer of them without trusted keys refuses
        to start."""
        if not self.trusted_keys:
            raise SystemExit(
                f"{service}: no trusted keys. Set CHANGEGATE_TRUSTED_KEYS to the public keys of the "
                "services that sign (policy, review-api, detector, executor)."
            )
        return Verifier(self.trusted_keys)

    def kafka_security(self) -> dict[str, Any]:
        """aiokafka client options for the configured transport security."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if "SSL" in self.kafka_security_protocol:
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=self.kafka_ssl_cafile, certfile=self.kafka_ssl_certfile, keyfile=self.kafka_ssl_keyfile
            )
        if self.kafka_security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return options
