#!/usr/bin/env python3
"""Check a changegate audit export (JSONL, from GET /v1/audit/export) without changegate.

Needs Python 3.9+ and the ``rfc8785`` package (``pip install rfc8785``); checkpoint signatures are
checked too when ``cryptography`` is installed and the audit service's public key is given.

For every row: its hash is recomputed from its own fields (docs/audit.md gives the rule byte for
byte); a row whose seq follows the previous row's must link to it (``prev_hash``); a gap in seq is
reported (a filtered export has gaps: pass --allow-gaps, and only each row's own hash and the links
between consecutive rows are checked). Each checkpoint line must name the hash of its row.

An archived month (`changegate audit archive`) starts after the month before: give its manifest
(--manifest: the file's sha256, its seq range, the first row's link to the month before, and the
last row named by a checkpoint in the export are checked too), or the row before it (--after).

    python3 verify_audit.py audit.jsonl [--public-key BASE64URL] [--head SEQ:HASH] [--allow-gaps]
                                        [--after SEQ:HASH] [--manifest audit-YYYY-MM.manifest.json]

Exit status 0: every check passed; 1: a check failed (each failure printed); 2: unreadable input.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from typing import Any

import rfc8785

LEGACY_FIELDS = (
    "seq", "object_type", "record_id", "field", "previous_value", "new_value", "source_system",
    "source_event_id", "detector", "confidence", "mode", "approver", "policy_version", "policy_hash",
    "rule_id", "proposal_id", "decision_id", "execution_id", "proposed_at", "decided_at", "executed_at",
)  # fmt: skip
VALUE_FIELDS = ("previous_value", "new_value", "proposed_value")


def row_hash(row: dict[str, Any]) -> str:
    """The hash a row should carry, by its hash_version (docs/audit.md)."""
    if row.get("hash_version") == 2:
        body = {k: v for k, v in row.items() if k != "hash"}
        return hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    # Version 1: values as values, json.dumps with sorted keys and no spaces, then "|" + prev_hash.
    body = {k: row[k] for k in LEGACY_FIELDS}
    for name in ("previous_value", "new_value"):
        body[name] = json.loads(body[name])
    if row["mode"] == "approved_with_changes":
        body["proposed_value"] = json.loads(row["proposed_value"])
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{text}|{row['prev_hash']}".encode()).hexdigest()


def check_signature(checkpoint: dict[str, Any], public_key: str) -> str | None:
    """None if the checkpoint's Ed25519 signature is good; else why not."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return "cryptography is not installed: signatures not checked"
    signature = checkpoint.get("signature") or {}
    signed = {k: v for k, v in checkpoint.items() if k != "signature"}

    def unb64(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    try:
        Ed25519PublicKey.from_public_bytes(unb64(public_key)).verify(
            unb64(signature.get("value", "")), rfc8785.dumps(signed)
        )
    except (InvalidSignature, ValueError):
        return "bad signature"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("export", help="the JSONL export ('-' for standard input)")
    parser.add_argument(
        "--public-key",
        help="the audit service's Ed25519 public key (base64url); write --public-key=KEY "
        "(a key may start with '-')",
    )
    parser.add_argument("--head", help="SEQ:HASH kept from an earlier verify: the export must hold it")
    parser.add_argument("--allow-gaps", action="store_true", help="a filtered export: gaps are expected")
    parser.add_argument("--after", help="SEQ:HASH of the row before the export's first (0: genesis)")
    parser.add_argument("--manifest", help="an archived month's manifest: check the export against it")
    args = parser.parse_args()
    manifest: dict[str, Any] = {}
    after: tuple[int, str] | None = None
    if args.manifest:
        with open(args.manifest, encoding="utf-8") as file:
            manifest = json.load(file)
        if manifest.get("rows"):
            after = (manifest["first_seq"] - 1, manifest["prev_hash"])
    if args.after:
        seq_text, _, link = args.after.partition(":")
        after = (int(seq_text), link)
    stream = sys.stdin if args.export == "-" else open(args.export, encoding="utf-8")  # noqa: SIM115
    problems: list[str] = []
    hashes: dict[int, str] = {}
    checkpoints: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None
    if after is not None:
        previous = {"seq": after[0], "hash": after[1]}
    rows = 0
    digest = hashlib.sha256()
    with stream:
        for number, line in enumerate(stream, 1):
            digest.update(line.encode())
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                print(f"line {number}: not JSON ({exc})", file=sys.stderr)
                return 2
            if "checkpoint" in item:
                checkpoints.append(item["checkpoint"])
                continue
            rows += 1
            seq = item["seq"]
            if row_hash(item) != item["hash"]:
                problems.append(f"row {seq}: content does not match its hash (altered)")
            if previous is not None:
                if seq == previous["seq"] + 1:
                    if item["prev_hash"] != previous["hash"]:
                        problems.append(f"row {seq}: prev_hash does not link to row {previous['seq']}")
                elif not args.allow_gaps or (after is not None and previous["seq"] == after[0]):
                    problems.append(f"rows {previous['seq'] + 1}..{seq - 1} are missing")
            elif seq == 1 and item["prev_hash"] != "":
                problems.append("row 1: prev_hash is not the genesis value ''")
            hashes[seq] = item["hash"]
            previous = item
    for checkpoint in checkpoints:
        seq = checkpoint["seq"]
        if seq in hashes and hashes[seq] != checkpoint["hash"]:
            problems.append(f"checkpoint at {seq}: row {seq} does not carry the signed hash (rewritten)")
        if args.public_key:
            why = check_signature(checkpoint, args.public_key)
            if why:
                problems.append(f"checkpoint at {seq}: {why}")
    if args.head:
        seq_text, _, digest = args.head.partition(":")
        if hashes.get(int(seq_text)) != digest:
            problems.append(f"row {seq_text} does not carry the expected head hash (or is missing)")
    if manifest:
        if digest.hexdigest() != manifest.get("sha256"):
            problems.append("the export's sha256 is not the manifest's")
        first_last = (min(hashes), max(hashes)) if hashes else (None, None)
        if (rows, *first_last) != (manifest.get("rows"), manifest.get("first_seq"), manifest.get("last_seq")):
            problems.append("the export's rows are not the manifest's (count, first or last seq)")
        last_seq = manifest.get("last_seq")
        if last_seq is not None and hashes.get(last_seq) != manifest.get("last_hash"):
            problems.append(f"row {last_seq} does not carry the manifest's last hash")
        if last_seq is not None and not any(
            c["seq"] == last_seq and c["hash"] == hashes.get(last_seq) for c in checkpoints
        ):
            problems.append(f"row {last_seq} (the last) is named by no checkpoint in the export")
    for problem in problems:
        print(problem)
    first = min(hashes) if hashes else 0
    last = max(hashes) if hashes else 0
    verdict = "OK" if not problems else "FAILED"
    counts = f"{len(checkpoints)} checkpoints, {len(problems)} problems"
    print(f"{verdict}: {rows} rows (seq {first}..{last}), {counts}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
