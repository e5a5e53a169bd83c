"""Schemathesis hooks for fuzzing the ingest service (loaded by the schemathesis CLI through
SCHEMATHESIS_HOOKS): every generated webhook request is signed as its source signs, so the fuzzer
gets past authentication to the parsing, the mapping and the producer. Configuration comes from
CHANGEGATE_FUZZ_BASE_URL and CHANGEGATE_FUZZ_SECRETS (a JSON object of the secret variables)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import schemathesis
from changegate.ingest.signatures import HUBSPOT_SIGNATURE_HEADER as SIGNATURE_HEADER
from changegate.ingest.signatures import HUBSPOT_TIMESTAMP_HEADER as TIMESTAMP_HEADER
from changegate.ingest.signatures import hubspot_signature_v3 as signature_v3
from changegate.ingest.sources import load_sources

BASE_URL = os.environ.get("CHANGEGATE_FUZZ_BASE_URL", "")
SECRETS: dict[str, str] = json.loads(os.environ.get("CHANGEGATE_FUZZ_SECRETS", "{}"))
SOURCES = load_sources(None, environ=SECRETS) if SECRETS else {}


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    path: str = case.operation.path
    if not path.startswith("/v1/webhooks/"):
        return
    try:
        body = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    except (TypeError, ValueError):  # a generated value JSON cannot hold: let schemathesis send it
        return
    kwargs["data"] = body  # sent as is: the signature covers these bytes
    headers = dict(case.headers or {})
    if path == "/v1/webhooks/hubspot":
        stamp = str(int(time.time() * 1000))
        url = f"{BASE_URL}/v1/webhooks/hubspot"
        headers[SIGNATURE_HEADER] = signature_v3(
            SECRETS["CHANGEGATE_HUBSPOT_CLIENT_SECRET"], "POST", url, body, stamp
        )
        headers[TIMESTAMP_HEADER] = stamp
    else:
        source = SOURCES.get(str((case.path_parameters or {}).get("source")))
        if source is not None:
            headers |= source.sign(body, time.time())
    case.headers = headers
