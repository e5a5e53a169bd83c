"""The checked-in JSON Schemas and AsyncAPI document are generated from the models and valid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from changegate.core import schemas
from changegate.core.contracts.envelope import EVENT_TYPES
from changegate.core.topics import TOPICS
from jsonschema.validators import validator_for

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


def test_checked_in_schemas_match_the_models() -> None:
    drift = schemas.drift(SCHEMAS_DIR)
    assert drift == [], f"regenerate with `make schemas`: {drift}"


def test_drift_is_detected(tmp_path: Path) -> None:
    schemas.export(tmp_path)
    assert schemas.drift(tmp_path) == []
    (tmp_path / "proposal.v1.schema.json").write_text("{}")
    (tmp_path / "stale.json").write_text("{}")
    assert schemas.drift(tmp_path) == ["proposal.v1.schema.json", "stale.json"]


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_each_json_schema_is_a_valid_schema(event_type: str) -> None:
    et = EVENT_TYPES[event_type]
    doc = json.loads((SCHEMAS_DIR / f"{event_type}.v{et.version}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["properties"]["payload"]["$ref"].endswith(et.model.__name__)


def test_json_schema_rejects_what_the_model_rejects() -> None:
    doc = json.loads((SCHEMAS_DIR / "crm_event.v2.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(doc)
    good: dict[str, Any] = {
        "event_id": "6a0c1c2e-9b8f-4f57-9a55-0e3b6f3a2d10",
        "event_type": "crm_event",
        "schema_version": 2,
        "occurred_at": "2026-11-24T10:00:00Z",
        "producer": {"service": "ingest", "version": "0.1.0"},
        "payload": {
            "source_system": "clay",
            "source_event_id": "c-1",
            "object_type": "contact",
            "record_id": "42",
            "kind": "enrichment_result",
            "properties": {"jobtitle": "CTO"},
        },
    }
    assert list(validator.iter_errors(good)) == []
    bad = {**good, "payload": {**good["payload"], "object_type": "deal"}}
    assert [e.message for e in validator.iter_errors(bad)]


def test_asyncapi_document_is_valid_asyncapi_3(spec_file: Any) -> None:
    schema = json.loads(spec_file("asyncapi/asyncapi-3.0.0.schema.json").read_text())
    document = yaml.safe_load((SCHEMAS_DIR / "asyncapi.yaml").read_text())
    validator = validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert errors == [], "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def test_asyncapi_names_every_topic_and_its_message() -> None:
    document = yaml.safe_load((SCHEMAS_DIR / "asyncapi.yaml").read_text())
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {f"changegate.{t.value}" for t in TOPICS}
    for message in document["components"]["messages"].values():
        ref = message["payload"]["$ref"].rsplit("/", 1)[-1]
        assert ref in document["components"]["schemas"]


def test_invalid_asyncapi_document_is_caught(spec_file: Any) -> None:
    schema = json.loads(spec_file("asyncapi/asyncapi-3.0.0.schema.json").read_text())
    document = yaml.safe_load((SCHEMAS_DIR / "asyncapi.yaml").read_text())
    del document["info"]
    assert list(validator_for(schema)(schema).iter_errors(document))
