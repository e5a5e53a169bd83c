"""JSON Schemas of every contract and the AsyncAPI 3 document of the topics, generated from the
models (never hand-written). `changegate schemas export` writes them; a test fails on drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from changegate.core import __version__
from changegate.core.contracts.envelope import EVENT_TYPES, Envelope
from changegate.core.topics import TOPICS, Topic
from pydantic import BaseModel

# Who sends and who receives each topic: the operations of the AsyncAPI document.
FLOWS: list[tuple[str, str, Topic]] = [
    ("ingest", "send", Topic.CRM_EVENTS),
    ("detector", "receive", Topic.CRM_EVENTS),
    ("detector", "send", Topic.PROPOSALS),
    ("detector", "send", Topic.DECISIONS),
    ("detector", "send", Topic.RECORD_CHANGES),
    ("detector", "receive", Topic.RECORD_CHANGES),
    ("policy", "receive", Topic.PROPOSALS),
    ("policy", "receive", Topic.DECISIONS),
    ("policy", "send", Topic.DECISIONS),
    ("policy", "send", Topic.PROPOSALS_PENDING),
    ("reviewApi", "receive", Topic.PROPOSALS_PENDING),
    ("reviewApi", "receive", Topic.DECISIONS),
    ("reviewApi", "send", Topic.DECISIONS),
    ("executor", "receive", Topic.DECISIONS),
    ("executor", "send", Topic.EXECUTIONS),
    ("executor", "send", Topic.PROPOSALS_PENDING),
    ("audit", "receive", Topic.DECISIONS),
    ("audit", "receive", Topic.EXECUTIONS),
]


def _camel(name: str) -> str:
    head, *rest = name.replace(".", "_").split("_")
    return head + "".join(p.title() for p in rest)


def _envelope_model(event_type: str) -> type[BaseModel]:
    model = EVENT_TYPES[event_type].model
    return Envelope[model]  # type: ignore[valid-type]


def json_schemas() -> dict[str, dict[str, Any]]:
    """One self-contained JSON Schema per event type (the envelope with its payload)."""
    out = {}
    for name, et in EVENT_TYPES.items():
        schema = _envelope_model(name).model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = f"{et.model.__name__} v{et.version}"
        schema["$id"] = f"changegate/{name}.v{et.version}.schema.json"
        out[f"{name}.v{et.version}.schema.json"] = schema
    return out


def asyncapi() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for name, et in EVENT_TYPES.items():
        schema = _envelope_model(name).model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        title = f"{et.model.__name__}Envelope"
        schemas[title] = schema
        messages[_camel(name)] = {
            "name": name,
            "title": et.model.__name__,
            "summary": (et.model.__doc__ or "").strip().splitlines()[0] if et.model.__doc__ else name,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{title}"},
            "bindings": {"kafka": {"key": {"type": "string", "description": "CRM record id"}}},
        }
    channels: dict[str, Any] = {}
    for topic, spec in TOPICS.items():
        msg = _camel(spec.event_type)
        channels[_camel(topic.value)] = {
            "address": f"changegate.{topic.value}",
            "description": f"{spec.description}. Keyed by CRM record id. The prefix "
            "'changegate.' is configurable (CHANGEGATE_TOPIC_PREFIX); poison messages go to the "
            "same address with the suffix '.dlq'.",
            "messages": {msg: {"$ref": f"#/components/messages/{msg}"}},
        }
    operations: dict[str, Any] = {}
    for service, action, topic in FLOWS:
        channel = _camel(topic.value)
        msg = _camel(TOPICS[topic].event_type)
        operations[f"{service}{action.title()}{channel[0].upper()}{channel[1:]}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{msg}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "changegate",
            "version": __version__,
            "description": "Approval-first CRM automation: the topics and their messages. Every "
            "message is an envelope (event id, type, schema version, correlation id, producer) "
            "around its payload.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "embedded": {
                "host": "127.0.0.1:19092",
                "protocol": "kafka",
                "description": "the embedded Tansu broker of `changegate dev up`",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def render() -> dict[str, str]:
    """File name -> content of everything `schemas export` writes."""
    files = {n: json.dumps(s, indent=2, sort_keys=True) + "\n" for n, s in json_schemas().items()}
    files["asyncapi.yaml"] = "# Generated by `changegate schemas export`; do not edit.\n" + yaml.safe_dump(
        asyncapi(), sort_keys=False, allow_unicode=True
    )
    return files


def export(directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in render().items():
        (directory / name).write_text(content)
    return sorted(render())


def drift(directory: Path) -> list[str]:
    """Files missing, changed or extra in ``directory`` compared with the models."""
    wanted = render()
    problems = [
        n for n, c in wanted.items() if not (directory / n).exists() or (directory / n).read_text() != c
    ]
    extra = [p.name for p in directory.glob("*") if p.name not in wanted and p.name != "README.md"]
    return sorted(problems + extra)
