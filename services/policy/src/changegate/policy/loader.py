"""Loading a policy file: YAML, validated, with errors that name the file, line and rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from changegate.policy.model import PolicyDocument
from pydantic import ValidationError

DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")


class PolicyError(ValueError):
    """A policy file that must not be used; the message says where and why."""


def parse_document(raw: bytes, source: str) -> PolicyDocument:
    try:
        text = raw.decode()
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a mapping with 'version' and 'rules'")
    try:
        return PolicyDocument.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(
            "\n".join(_describe(e, data, root, source) for e in exc.errors(include_url=False))
        ) from exc


def _describe(error: Any, data: dict[str, Any], root: yaml.Node | None, source: str) -> str:
    loc = tuple(error["loc"])
    line = _line_of(root, loc)
    where = f"{source}:{line}" if line else source
    rule = ""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = data.get("rules") or []
        rule_id = rules[loc[1]].get("id") if loc[1] < len(rules) and isinstance(rules[loc[1]], dict) else None
        rule = f" rule {rule_id!r}:" if rule_id else f" rule #{loc[1] + 1}:"
        loc = loc[2:]
    field = ".".join(str(p) for p in loc)
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}:{rule} {field + ': ' if field else ''}{message}"


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest existing ancestor)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line
