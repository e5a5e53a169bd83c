"""Generic webhook sources, declared in YAML: how each authenticates (an HMAC signature of the body
or a bearer token) and how its payload becomes CrmEvents (a mapping). A new source is configuration:

```yaml
sources:
  clay:                                    # POST /v1/webhooks/clay
    auth: {type: bearer, token_env: CHANGEGATE_INGEST_CLAY_TOKEN}
    mapping: clay_enrichment               # a shipped mapping (mappings/*.yaml), or one written inline
```

Everything is checked when the file is loaded — unknown keys, JMESPath that does not compile, a
secret that is not set or too short — and refused with an error naming the file and the source.

A source's secret is a shared secret of its own (an environment variable, or a file of that name in
CHANGEGATE_SECRETS_DIR), not a changegate API token: a source is not a person with a role, and
checking it must not need the database on the path that answers the sender."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from changegate.core.logging import get_logger
from changegate.ingest.hubspot import SOURCE as HUBSPOT
from changegate.ingest.mapping import Mapped, MappingSpec
from changegate.ingest.mapping import Mapping as CompiledMapping
from changegate.ingest.refusals import SignatureError
from changegate.ingest.settings import MIN_SECRET_LENGTH
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

log = get_logger(__name__)

DEFAULT_SOURCES_FILE = "sources.yaml"
SourceName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,100}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HmacAuth(_Strict):
    """An HMAC of the raw body (and of a timestamp, when the sender sends one) in a header."""

    type: Literal["hmac"]
    secret_env: EnvName = Field(description="variable (or secret file) holding the shared secret")
    header: HeaderName = "X-Changegate-Signature"
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = Field("", max_length=50, description="before the digest in the header, e.g. 'sha256='")
    timestamp_header: HeaderName | None = Field(None, description="header with the signing time")
    timestamp_unit: Literal["seconds", "milliseconds"] = "seconds"
    max_age_seconds: float = Field(300, gt=0, le=86_400, description="older (or further ahead) is refused")
    signed_payload: str = Field(
        "{body}",
        max_length=200,
        description="what is signed: {body} (the raw body) and, with a timestamp header, {timestamp}, "
        "e.g. '{timestamp}.{body}'",
    )

    @model_validator(mode="after")
    def _signs_body_and_timestamp(self) -> Self:
        placeholders = re.findall(r"\{([^{}]*)\}", self.signed_payload)
        if set(placeholders) - {"body", "timestamp"}:
            raise ValueError(
                f"signed_payload: only {{body}} and {{timestamp}} can be used, not {placeholders}"
            )
        if placeholders.count("body") != 1:
            raise ValueError("signed_payload must hold {body} exactly once")
        if self.timestamp_header and "timestamp" not in placeholders:
            # Else a replay with a fresh, unsigned timestamp would pass.
            raise ValueError("signed_payload must hold {timestamp} when timestamp_header is set")
        if "timestamp" in placeholders and not self.timestamp_header:
            raise ValueError("signed_payload uses {timestamp} but no timestamp_header is set")
        return self


class BearerAuth(_Strict):
    """A static token: 'Authorization: Bearer <token>', or the token alone in another header (for
    senders that can only add fixed headers, such as Clay's HTTP API column)."""

    type: Literal["bearer"]
    token_env: EnvName = Field(description="variable (or secret file) holding the token")
    header: HeaderName = "Authorization"


class SourceSpec(_Strict):
    description: str = ""
    auth: Annotated[HmacAuth | BearerAuth, Field(discriminator="type")]
    mapping: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")] | MappingSpec


class SourcesFile(_Strict):
    sources: dict[SourceName, SourceSpec]


class SourcesFileError(ValueError):
    """The sources file cannot be used; the message names the file and the source."""


@dataclass(frozen=True)
class Source:
    """A configured source, its secret resolved and its selectors compiled."""

    name: str
    auth: HmacAuth | BearerAuth
    secret: bytes
    mapping: CompiledMapping

    def challenge(self) -> str:
        """WWW-Authenticate of a 401 from this source."""
        if isinstance(self.auth, BearerAuth):
            return 'Bearer realm="changegate-ingest"'
        return f'Signature realm="changegate-ingest", header="{self.auth.header}"'

    def authenticate(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        """Raises SignatureError unless the request proves it knows the secret (constant time)."""
        if isinstance(self.auth, BearerAuth):
            _check_bearer(self.auth, self.secret, headers)
        else:
            _check_hmac(self.auth, self.secret, headers, body, now)

    def to_crm_events(self, payload: Any) -> Mapped:
        return self.mapping.apply(self.name, payload)

    def sign(self, body: bytes, now: float) -> dict[str, str]:
        """The headers this source's sender adds to ``body`` (for senders we write ourselves: the
        demo feed and the benchmark)."""
        if isinstance(self.auth, BearerAuth):
            token = self.secret.decode()
            bearer = self.auth.header.lower() == "authorization"
            return {self.auth.header: f"Bearer {token}" if bearer else token}
        headers: dict[str, str] = {}
        timestamp = ""
        if self.auth.timestamp_header:
            timestamp = str(int(now * 1000) if self.auth.timestamp_unit == "milliseconds" else int(now))
            headers[self.auth.timestamp_header] = timestamp
        headers[self.auth.header] = self.auth.prefix + _digest(self.auth, self.secret, body, timestamp)
        return headers


def _check_bearer(auth: BearerAuth, secret: bytes, headers: Mapping[str, str]) -> None:
    value = headers.get(auth.header)
    if not value:
        raise SignatureError("missing_token", f"no {auth.header} header")
    if auth.header.lower() == "authorization":
        scheme, _, value = value.partition(" ")
        if scheme.lower() != "bearer":
            raise SignatureError("bad_token", "Authorization is not a Bearer token")
    if not hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), secret):
        raise SignatureError("bad_token", "the token is not this source's")


def _digest(auth: HmacAuth, secret: bytes, body: bytes, timestamp: str) -> str:
    head, tail = auth.signed_payload.split("{body}")
    message = (
        head.replace("{timestamp}", timestamp).encode()
        + body
        + tail.replace("{timestamp}", timestamp).encode()
    )
    digest = hmac.new(secret, message, getattr(hashlib, auth.algorithm)).digest()
    return digest.hex() if auth.encoding == "hex" else base64.b64encode(digest).decode()


def _check_hmac(auth: HmacAuth, secret: bytes, headers: Mapping[str, str], body: bytes, now: float) -> None:
    given = headers.get(auth.header)
    if not given:
        raise SignatureError("missing_signature", f"no {auth.header} header")
    timestamp = ""
    if auth.timestamp_header:
        timestamp = headers.get(auth.timestamp_header) or ""
        if not timestamp:
            raise SignatureError("missing_timestamp", f"no {auth.timestamp_header} header")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 16):
            raise SignatureError(
                "bad_timestamp", f"{auth.timestamp_header} is not a Unix time in {auth.timestamp_unit}"
            )
    value = given.strip()
    if auth.prefix:
        if not value.startswith(auth.prefix):
            raise SignatureError("bad_signature", f"{auth.header} does not start with {auth.prefix!r}")
        value = value[len(auth.prefix) :]
    if auth.encoding == "hex":
        value = value.lower()
    expected = _digest(auth, secret, body, timestamp)
    if not hmac.compare_digest(expected.encode(), value.encode("utf-8", "surrogateescape")):
        raise SignatureError("bad_signature", f"{auth.header} does not match the request")
    if auth.timestamp_header:
        age = now - int(timestamp) / (1000 if auth.timestamp_unit == "milliseconds" else 1)
        if abs(age) > auth.max_age_seconds:
            raise SignatureError(
                "stale_timestamp",
                f"{auth.timestamp_header} is {abs(age):.0f} s {'old' if age > 0 else 'in the future'}: "
                f"requests more than {auth.max_age_seconds:.0f} s away from now are refused (replays)",
            )


# --- loading ---------------------------------------------------------------------------------------


def _package_file(name: str) -> Path:
    return Path(str(resources.files("changegate.ingest").joinpath(name)))


def shipped_mappings() -> list[str]:
    return sorted(p.stem for p in _package_file("mappings").glob("*.yaml"))


def load_mapping(name: str) -> MappingSpec:
    """A shipped mapping (``mappings/<name>.yaml``)."""
    path = _package_file(f"mappings/{name}.yaml")
    if not path.is_file():
        raise ValueError(f"no shipped mapping {name!r} (shipped: {', '.join(shipped_mappings())})")
    try:
        return MappingSpec.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise ValueError(f"{path}: {_errors(exc)}") from exc


def _secret(variable: str, environ: Mapping[str, str], secrets_dir: Path | None) -> str | None:
    if environ.get(variable):
        return environ[variable]
    if secrets_dir is not None:
        for name in (variable, variable.lower()):
            if (secrets_dir / name).is_file():
                return (secrets_dir / name).read_text().strip()
    return None


def secret_variable(spec: SourceSpec) -> str:
    return spec.auth.secret_env if isinstance(spec.auth, HmacAuth) else spec.auth.token_env


def read_sources_file(path: Path) -> SourcesFile:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SourcesFileError(f"{path}: cannot read it: {exc}") from exc
    try:
        return SourcesFile.model_validate(raw)
    except ValidationError as exc:
        raise SourcesFileError(f"{path}: {_errors(exc)}") from exc


def load_sources(
    path: Path | None, environ: Mapping[str, str] | None = None, secrets_dir: Path | None = None
) -> dict[str, Source]:
    """The sources of ``path``, or of the shipped sources.yaml when None — where a source whose
    secret is not set is left out (logged). In a file of your own, a missing secret is an error."""
    strict = path is not None
    file = path if path is not None else _package_file(DEFAULT_SOURCES_FILE)
    environ = os.environ if environ is None else environ
    sources: dict[str, Source] = {}
    for name, spec in read_sources_file(file).sources.items():
        where = f"{file}: source {name!r}"
        if name == HUBSPOT:
            raise SourcesFileError(f"{where}: the name is taken by HubSpot's own endpoint")
        try:
            mapping = load_mapping(spec.mapping) if isinstance(spec.mapping, str) else spec.mapping
        except ValueError as exc:
            raise SourcesFileError(f"{where}: mapping: {exc}") from exc
        variable = secret_variable(spec)
        secret = _secret(variable, environ, secrets_dir)
        if secret is None:
            if strict:
                raise SourcesFileError(
                    f"{where}: its secret {variable} is not set (environment or secrets dir)"
                )
            log.info("source left out: its secret is not set", source=name, variable=variable)
            continue
        if len(secret) < MIN_SECRET_LENGTH:
            raise SourcesFileError(f"{where}: {variable} is shorter than {MIN_SECRET_LENGTH} characters")
        sources[name] = Source(name, spec.auth, secret.encode(), CompiledMapping.of(mapping))
    return sources


def shipped_secret_variables() -> list[str]:
    """The secret variables of the shipped sources.yaml (the dev stack makes one for each)."""
    shipped = read_sources_file(_package_file(DEFAULT_SOURCES_FILE))
    return [secret_variable(spec) for spec in shipped.sources.values()]


def _errors(exc: ValidationError) -> str:
    """Pydantic's errors, each located in words: source 'clay': auth.header: …"""
    parts = []
    for error in exc.errors()[:5]:
        loc = [str(p) for p in error["loc"] if p not in {"hmac", "bearer", "str", "MappingSpec"}]
        if loc[:1] == ["sources"] and len(loc) > 1:
            loc = [f"source {loc[1]!r}:", ".".join(loc[2:])]
        parts.append(f"{' '.join(p for p in loc if p)}: {error['msg']}")
    return "; ".join(parts)
