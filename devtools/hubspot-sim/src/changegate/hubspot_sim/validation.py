"""Checking requests and answers against HubSpot's own OpenAPI documents, when they are at hand.

The documents are HubSpot's (collected in the shared specs, ``CHANGEGATE_SPECS_DIR``); they are not
shipped with changegate. Without them the simulator still behaves like HubSpot but checks nothing
against the documents, and says so (``/_sim/info``, its log, and `changegate dev up`)."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from openapi_core import Config, OpenAPI
from openapi_core.contrib.starlette import StarletteOpenAPIRequest, StarletteOpenAPIResponse
from starlette.requests import Request
from starlette.responses import Response

SPEC_FILES = {
    "contacts": "crm-contacts.v3.json",
    "companies": "crm-companies.v3.json",
    "owners": "crm-owners.v3.json",
}
SPECS_DIR_ENV = "CHANGEGATE_SPECS_DIR"


def default_specs_dir() -> Path:
    """``$CHANGEGATE_SPECS_DIR``, else ``../shared/specs`` from the working directory (a checkout
    beside the shared specs)."""
    configured = os.environ.get(SPECS_DIR_ENV)
    return Path(configured).expanduser() if configured else Path("..") / "shared" / "specs"


def missing_documents(specs_dir: Path | None) -> list[Path]:
    """The HubSpot documents the simulator validates with that are not in ``specs_dir``."""
    if specs_dir is None:
        return [Path("hubspot") / name for name in SPEC_FILES.values()]
    return [
        specs_dir / "hubspot" / name
        for name in SPEC_FILES.values()
        if not (specs_dir / "hubspot" / name).is_file()
    ]


def _explain(error: Exception) -> str:
    """openapi-core nests the schema errors that say what was wrong under a general one."""
    causes = [str(c) for c in getattr(error, "schema_errors", []) or []]
    cause = error.__cause__
    causes += [str(c) for c in getattr(cause, "schema_errors", []) or []]
    return f"{error}" + (f" ({'; '.join(causes)})" if causes else "")


def _load(path: Path) -> OpenAPI:
    document = copy.deepcopy(json.loads(path.read_text()))
    document["servers"] = [{"url": "/"}]  # served here, not at api.hubapi.com
    # HubSpot documents an answer without a body (a 204) as an empty content map, which
    # openapi-core reads as a body required: an empty map is no body.
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for answer in (operation.get("responses", {}) if isinstance(operation, dict) else {}).values():
                if answer.get("content") == {}:
                    del answer["content"]
    # HubSpot documents its error answers as "*/*" with a JSON schema: read them as the JSON they are.
    return OpenAPI.from_dict(document, config=Config(extra_media_type_deserializers={"*/*": json.loads}))


@dataclass
class Validator:
    """HubSpot's documents by API (contacts, companies, owners), or none: then nothing is checked."""

    specs_dir: Path | None
    documents: dict[str, OpenAPI] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.specs_dir is not None and not missing_documents(self.specs_dir):
            self.documents = {
                name: _load(self.specs_dir / "hubspot" / file) for name, file in SPEC_FILES.items()
            }

    @property
    def active(self) -> bool:
        return bool(self.documents)

    def describe(self) -> str:
        if self.active:
            return (
                f"validating every request and answer against HubSpot's OpenAPI documents in {self.specs_dir}"
            )
        missing = ", ".join(str(p) for p in missing_documents(self.specs_dir))
        return (
            f"NOT validating against HubSpot's OpenAPI documents (not found: {missing}); "
            f"set {SPECS_DIR_ENV} to the folder holding hubspot/*.json"
        )

    def request_errors(self, api: str, request: Request, body: bytes) -> list[str]:
        if not self.active:
            return []
        openapi_request = StarletteOpenAPIRequest(request, body)
        return [_explain(e) for e in self.documents[api].iter_request_errors(openapi_request)]

    def response_errors(self, api: str, request: Request, body: bytes, response: Response) -> list[str]:
        """An answer checked against the document. A page of results is checked with its first
        result only: every result of a page is made by the same code, and checking a hundred of
        them would make the simulator, not HubSpot's rate limit, what bounds a client."""
        if not self.active:
            return []
        openapi_request = StarletteOpenAPIRequest(request, body)
        answer = bytes(response.body)
        if answer.startswith(b"{") and b'"results"' in answer:
            parsed = json.loads(answer)
            if isinstance(parsed.get("results"), list) and len(parsed["results"]) > 1:
                parsed["results"] = parsed["results"][:1]
                answer = json.dumps(parsed).encode()
        checked = Response(answer, status_code=response.status_code, headers=dict(response.headers))
        checked.headers["content-length"] = str(len(answer))
        openapi_response = StarletteOpenAPIResponse(checked, answer)
        return [str(e) for e in self.documents[api].iter_response_errors(openapi_request, openapi_response)]
