"""The mutator behind `make mutation`: which mutants it makes, that each changes what it says, and
which modules a mutant forces its tests to import afresh."""

from __future__ import annotations

import ast
import textwrap
from typing import Any

from mutation.__main__ import ROOT as REPO
from mutation.__main__ import dependents, import_graph, module_name
from mutation.operators import mutants, mutated_tree

SOURCE = textwrap.dedent('''
    """Module docstring."""
    from __future__ import annotations

    LIMIT: float = 0.92


    class Rule:
        """Class docstring."""

        def check(self, fields: list[str], ok: list[str], level: str, weights: dict[str, float]) -> float:
            if any(f not in ok for f in fields):
                return 0.0
            if not fields:
                raise ValueError(f"no fields in {ok}")
            weight = weights.get(level, 0.0)
            return weight if weight >= LIMIT and level == "exact" else -weight
''')


ANY_NOT_IN = "if any((f not in ok for f in fields))"


def _run(source: str, *args: Any) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(source, "m.py", "exec"), namespace)
    return namespace["Rule"]().check(*args)


def _mutant(name_part: str) -> int:
    (found,) = [m for m in mutants(SOURCE) if name_part in m.name]
    return found.index


def test_the_kinds_of_mutants_and_their_names() -> None:
    names = [m.name for m in mutants(SOURCE)]
    assert len(names) == len(set(names))
    assert "<module>: LIMIT: float = 0.92 -> LIMIT: float = 1.92" in names
    expected = [
        f"Rule.check: {ANY_NOT_IN}: ... -> if all((f not in ok for f in fields)): ...",
        f"Rule.check: {ANY_NOT_IN}: ... -> (deleted)",
        f"Rule.check: {ANY_NOT_IN}: ... -> if any((f in ok for f in fields)): ...",
        "Rule.check: if not fields: ... -> if fields: ...",
        "Rule.check: raise ValueError(f'no fields in {ok}') -> (deleted)",
        "Rule.check: weight = weights.get(level, 0.0) -> weight = weights.get(level, 1.0)",
        "Rule.check: return weight if weight >= LIMIT and level == 'exact' else -weight"
        " -> return weight if weight > LIMIT and level == 'exact' else -weight",
        "Rule.check: return weight if weight >= LIMIT and level == 'exact' else -weight"
        " -> return weight if weight >= LIMIT or level == 'exact' else -weight",
        "Rule.check: return weight if weight >= LIMIT and level == 'exact' else -weight"
        " -> return weight if weight >= LIMIT and level == 'XXexactXX' else -weight",
    ]
    for name in expected:
        assert name in names


def test_docstrings_annotations_imports_and_f_strings_are_left_alone() -> None:
    text = "\n".join(m.name for m in mutants(SOURCE))
    for untouched in ("docstring", "XXannotationsXX", "list[str]", "XXno fields"):
        assert untouched not in text


def test_a_mutant_changes_behaviour_as_named() -> None:
    args = (["a"], ["a"], "exact", {"exact": 0.95})
    assert _run(SOURCE, *args) == 0.95
    boundary = ast.unparse(mutated_tree(SOURCE, _mutant("weight > LIMIT")))
    assert _run(boundary, ["a"], ["a"], "exact", {"exact": 0.92}) == -0.92
    assert _run(SOURCE, ["a"], ["a"], "exact", {"exact": 0.92}) == 0.92
    unknown = ast.unparse(mutated_tree(SOURCE, _mutant("get(level, 1.0)")))
    assert _run(unknown, ["a"], ["a"], "fuzzy", {}) == -1.0
    assert _run(SOURCE, ["a"], ["a"], "fuzzy", {}) == 0.0
    scope = ast.unparse(mutated_tree(SOURCE, _mutant("if all(")))
    assert _run(scope, ["a", "b"], ["a"], "exact", {"exact": 0.95}) == 0.95
    assert _run(SOURCE, ["a", "b"], ["a"], "exact", {"exact": 0.95}) == 0.0


def test_a_pydantic_bound_is_moved_across_its_limit() -> None:
    source = "from pydantic import Field\nm = Field(gt=0, le=1)\n"
    names = [m.name for m in mutants(source)]
    assert "<module>: m = Field(gt=0, le=1) -> m = Field(ge=0, le=1)" in names
    assert "<module>: m = Field(gt=0, le=1) -> m = Field(gt=0, lt=1)" in names
    assert "<module>: m = Field(gt=0, le=1) -> m = Field(gt=1, le=1)" in names


def test_documentation_text_is_not_mutated() -> None:
    source = 'C = Counter("c_total", "help", ["a"])\nx = Field(1, description="doc")\n'
    names = [m.name for m in mutants(source)]
    assert not any("XXhelpXX" in n or "XXdocXX" in n for n in names)
    assert any("XXc_totalXX" in n for n in names)
    assert any("XXaXX" in n for n in names)


def test_a_pragma_keeps_a_line_unmutated() -> None:
    assert mutants("x = 1  # pragma: no mutate\n") == []
    assert len(mutants("x = 1\n")) == 1


def test_a_mutant_of_a_module_forces_its_importers_to_be_reloaded() -> None:
    graph = import_graph()
    changed = dependents(graph, "changegate.policy.model")
    assert {"changegate.policy.model", "changegate.policy.engine", "changegate.policy.loader"} <= changed
    assert "changegate.core.contracts" not in changed
    assert "changegate.audit.chain" not in changed
    path = REPO / "services" / "policy" / "src" / "changegate" / "policy" / "model.py"
    assert module_name(path) == "changegate.policy.model"
