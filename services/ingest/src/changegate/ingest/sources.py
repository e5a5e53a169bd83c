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

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from changegate.core.logging import get_logger
from changegate.ingest.hubspot import SOURCE as HUBSPOT
from changegate.ingest.mapping import Mapped, MappingSpec
from changegate.ingest.mapping import Mapping as CompiledMapping
from changegate.ingest.settings import MIN_SECRET_LENGTH
from changegate.ingest.signatures import BearerAuth, HmacAuth, check_bearer, check_hmac, hmac_digest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

log = get_logger(__name__)

DEFAULT_SOURCES_FILE = "sources.yaml"
SourceName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
            check_bearer(self.auth, self.secret, headers)
        else:
            check_hmac(self.auth, self.secret, headers, body, now)

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
        headers[self.auth.header] = self.auth.prefix + hmac_digest(self.auth, self.secret, body, timestamp)
        return headers


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
