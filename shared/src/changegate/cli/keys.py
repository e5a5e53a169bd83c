"""`changegate keys generate`: the Ed25519 keys services sign decisions and executions with, as
files a secret volume can carry (one folder per service, read through CHANGEGATE_SECRETS_DIR)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from changegate.cli.stack import log_friendly
from changegate.core.signing import SIGNERS, SigningKey, TrustedKey
from rich.console import Console

app = typer.Typer(help="Signing keys of the services that decide, execute and audit.", no_args_is_help=True)
console = log_friendly(Console(stderr=True, soft_wrap=True))
# Every service that signs or verifies: each gets the trusted keys; signers also their own key.
SERVICES = ("detector", "policy", "review-api", "executor", "audit")
SIGNING_FILE, TRUSTED_FILE = "changegate_signing_key", "changegate_trusted_keys"


@app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option(help="folder to write <service>/changegate_* files into")],
    rotate: Annotated[
        bool,
        typer.Option(
            help="new keys even if some exist; keys already trusted stay trusted (in-flight messages)"
        ),
    ] = False,
    key_id: Annotated[str | None, typer.Option(help="key id suffix (default: today's date)")] = None,
) -> None:
    """Write a signing key for each signer (policy, review-api, detector, executor, audit) and the
    trusted keys for every service. Without --rotate, existing keys are kept (safe to run at every
    start); a signer without a key yet (one added by an upgrade) gets one, trusted by every service."""
    missing = [s for s in SIGNERS if not (out / s / SIGNING_FILE).exists()]
    if not missing and not rotate:
        console.print(f"keys exist in {out}; kept (pass --rotate for new ones)")
        return
    suffix = key_id or datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    signers = SIGNERS if rotate else missing
    keys = {signer: SigningKey.generate(f"{signer}-{suffix}", signer) for signer in signers}
    trusted: dict[str, TrustedKey] = {}
    previous = out / "audit" / TRUSTED_FILE
    if previous.exists():
        trusted.update({k: TrustedKey.model_validate(v) for k, v in json.loads(previous.read_text()).items()})
    trusted.update({key.key_id: key.trusted() for key in keys.values()})
    document = json.dumps({k: t.model_dump() for k, t in trusted.items()}, indent=2)
    for service in SERVICES:
        folder = out / service
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder / TRUSTED_FILE, document)
        if service in keys:
            _write(folder / SIGNING_FILE, keys[service].setting())
    console.print(f"wrote keys {', '.join(k.key_id for k in keys.values())} to {out}")
    typer.echo(document)


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)
