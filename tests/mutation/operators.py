"""The mutants of one Python module: each changes one thing, as a careless edit would.

- a comparison flipped at its boundary or negated (``<`` ↔ ``<=``, ``>`` ↔ ``>=``, ``==`` ↔ ``!=``,
  ``in`` ↔ ``not in``, ``is`` ↔ ``is not``);
- ``and`` ↔ ``or``; ``not x`` → ``x``; ``&`` ↔ ``|``; ``+`` ↔ ``-``; ``*`` ↔ ``/``;
- a condition negated (``if``, ``while``, ``x if c else y``, a comprehension's ``if``);
- a check deleted (an ``if`` without ``else``), a ``raise``, a call statement, an augmented
  assignment or an ``assert`` deleted;
- a constant changed: a number plus one, ``True`` ↔ ``False``, a string ``"s"`` → ``"XXsXX"``;
- ``any`` ↔ ``all``, ``min`` ↔ ``max``;
- a bound of a pydantic ``Field`` (or any call) moved: ``gt`` ↔ ``ge``, ``lt`` ↔ ``le``.

Not mutated: docstrings, annotations, imports, f-strings, ``__all__``, and text that only
documents (``description=`` of a pydantic field, the help text of a Prometheus metric).
A mutant is named by its function and the statement before and after, e.g.
``Condition.matches: if ...: ... -> if not ...: ...``; that name, not a line number, is what the
allow-list of equivalent mutants refers to."""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BINOP: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
}
_CALLS = {"any": "all", "all": "any", "min": "max", "max": "min"}
_BOUNDS = {"gt": "ge", "ge": "gt", "lt": "le", "le": "lt"}
_UNDOCUMENTED = ("description",)  # keyword arguments whose text is documentation only
_METRICS = ("Counter", "Gauge", "Histogram", "Summary")  # prometheus: the 2nd argument is help text

# A replacement builder: the node to put in place of the original, or None to delete a statement.
Replace = Callable[[Any], ast.AST | None]


@dataclass(frozen=True)
class Mutant:
    index: int
    line: int
    qualname: str
    operator: str
    before: str
    after: str

    @property
    def name(self) -> str:
        return f"{self.qualname}: {self.before} -> {self.after}"


@dataclass(frozen=True)
class _Site:
    node: ast.AST
    parent: ast.AST
    statement: ast.stmt
    qualname: str
    operator: str
    replace: Replace


def _is_docstring(node: ast.stmt, body: list[ast.stmt]) -> bool:
    return (
        node is body[0]
        and isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _negated(test: ast.expr) -> ast.expr:
    return ast.UnaryOp(op=ast.Not(), operand=test)


def _with(node: ast.AST, **changes: object) -> ast.AST:
    new = copy.copy(node)
    for name, value in changes.items():
        setattr(new, name, value)
    return new


def _constant(node: ast.Constant) -> ast.Constant | None:
    value = node.value
    if isinstance(value, bool):
        return ast.Constant(not value)
    if isinstance(value, int | float):
        return ast.Constant(value + 1)
    if isinstance(value, str):
        return ast.Constant(f"XX{value}XX")
    return None


class _Sites:
    """Every mutable place of a module, in source order (the order is a mutant's index)."""

    def __init__(self, tree: ast.Module) -> None:
        self.found: list[_Site] = []
        self._body(tree.body, tree, "<module>")

    def _add(self, node: ast.AST, parent: ast.AST, stmt: ast.stmt, scope: str, op: str, fn: Replace) -> None:
        self.found.append(_Site(node, parent, stmt, scope, op, fn))

    def _body(self, body: list[ast.stmt], parent: ast.AST, scope: str) -> None:
        for stmt in body:
            if isinstance(parent, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and (
                _is_docstring(stmt, body)
            ):
                continue
            self._statement(stmt, parent, scope)

    def _statement(self, stmt: ast.stmt, parent: ast.AST, scope: str) -> None:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            return
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in stmt.targets
        ):
            return
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            inner = stmt.name if scope == "<module>" else f"{scope}.{stmt.name}"
            for decorator in stmt.decorator_list:
                self._expr(decorator, stmt, stmt, scope)
            for default in [*stmt.args.defaults, *(d for d in stmt.args.kw_defaults if d is not None)]:
                self._expr(default, stmt.args, stmt, scope)
            self._body(stmt.body, stmt, inner)
            return
        if isinstance(stmt, ast.ClassDef):
            inner = stmt.name if scope == "<module>" else f"{scope}.{stmt.name}"
            for decorator in stmt.decorator_list:
                self._expr(decorator, stmt, stmt, scope)
            self._body(stmt.body, stmt, inner)
            return
        if isinstance(stmt, ast.If | ast.While):
            if not (isinstance(stmt.test, ast.UnaryOp) and isinstance(stmt.test.op, ast.Not)):
                self._add(stmt, parent, stmt, scope, "negate", lambda n: _with(n, test=_negated(n.test)))
            if isinstance(stmt, ast.If) and not stmt.orelse:
                self._add(stmt, parent, stmt, scope, "delete", lambda n: None)
            self._expr(stmt.test, stmt, stmt, scope)
            self._body(stmt.body, stmt, scope)
            self._body(stmt.orelse, stmt, scope)
            return
        if isinstance(stmt, ast.Raise | ast.AugAssign | ast.Assert) or (
            isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call | ast.Await)
        ):
            self._add(stmt, parent, stmt, scope, "delete", lambda n: None)
        if isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                self._expr(stmt.value, stmt, stmt, scope)
            return
        for name, value in ast.iter_fields(stmt):
            if isinstance(value, ast.expr):
                self._expr(value, stmt, stmt, scope)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.expr):
                        self._expr(item, stmt, stmt, scope)
                    elif isinstance(item, ast.stmt):
                        self._body(value, stmt, scope)
                        break
                    elif isinstance(item, ast.excepthandler | ast.withitem | ast.match_case):
                        self._generic(item, stmt, scope)
            del name

    def _generic(self, node: ast.AST, stmt: ast.stmt, scope: str) -> None:
        for value in ast.iter_fields(node):
            field = value[1]
            if isinstance(field, ast.expr):
                self._expr(field, node, stmt, scope)
            elif isinstance(field, list):
                if field and isinstance(field[0], ast.stmt):
                    self._body(field, node, scope)
                else:
                    for item in field:
                        if isinstance(item, ast.expr):
                            self._expr(item, node, stmt, scope)

    def _expr(self, node: ast.expr, parent: ast.AST, stmt: ast.stmt, scope: str) -> None:
        if isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                flip = _FLIP.get(type(op))
                if flip is not None:
                    self._add(node, parent, stmt, scope, "compare", _compare(i, flip))
        elif isinstance(node, ast.BoolOp):
            swapped: ast.boolop = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self._add(node, parent, stmt, scope, "boolean", lambda n: _with(n, op=swapped))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self._add(node, parent, stmt, scope, "not", lambda n: n.operand)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP:
            other = _BINOP[type(node.op)]()
            self._add(node, parent, stmt, scope, "arithmetic", lambda n: _with(n, op=other))
        elif isinstance(node, ast.IfExp):
            self._add(node, parent, stmt, scope, "negate", lambda n: _with(n, test=_negated(n.test)))
        elif isinstance(node, ast.Constant) and _constant(node) is not None:
            self._add(node, parent, stmt, scope, "constant", lambda n: _constant(n))
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in _CALLS:
                other_name = _CALLS[node.func.id]
                self._add(
                    node,
                    parent,
                    stmt,
                    scope,
                    "call",
                    lambda n: _with(n, func=ast.Name(other_name, ast.Load())),
                )
            for i, kw in enumerate(node.keywords):
                if kw.arg in _BOUNDS:
                    self._add(node, parent, stmt, scope, "bound", _bound(i))
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.Call) and isinstance(child, ast.keyword):
                if child.arg not in _UNDOCUMENTED:
                    self._expr(child.value, child, stmt, scope)
            elif isinstance(node, ast.comprehension | ast.expr) and isinstance(child, ast.comprehension):
                self._comprehension(child, stmt, scope)
            elif isinstance(child, ast.expr) and not _is_help_text(node, child):
                self._expr(child, node, stmt, scope)

    def _comprehension(self, node: ast.comprehension, stmt: ast.stmt, scope: str) -> None:
        self._expr(node.iter, node, stmt, scope)
        for i, test in enumerate(node.ifs):
            self._add(test, node, stmt, scope, "negate", lambda n: _negated(n))
            self._expr(test, node, stmt, scope)
            del i


def _is_help_text(node: ast.expr, child: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _METRICS
        and len(node.args) > 1
        and child is node.args[1]
    )


def _compare(i: int, flip: type[ast.cmpop]) -> Replace:
    def replace(node: ast.AST) -> ast.AST:
        assert isinstance(node, ast.Compare)
        ops = list(node.ops)
        ops[i] = flip()
        return _with(node, ops=ops)

    return replace


def _bound(i: int) -> Replace:
    def replace(node: ast.AST) -> ast.AST:
        assert isinstance(node, ast.Call)
        keywords = list(node.keywords)
        kw = keywords[i]
        keywords[i] = ast.keyword(arg=_BOUNDS[kw.arg or ""], value=kw.value)
        return _with(node, keywords=keywords)

    return replace


def _substitute(parent: ast.AST, old: ast.AST, new: ast.AST | None) -> ast.AST:
    """Put ``new`` in place of ``old`` (a deleted statement becomes ``pass``); returns what was put."""
    placed = ast.Pass() if new is None else new
    for name, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, name, placed)
            return placed
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is old:
                    value[i] = placed
                    return placed
    raise AssertionError(f"{ast.dump(old)[:80]} is not a child of {type(parent).__name__}")


def _header(stmt: ast.AST) -> str:
    """A statement on one line, with the statements nested in it shown as ``...``."""
    shallow = copy.copy(stmt)
    for name in ("body", "orelse", "finalbody", "handlers"):
        value = getattr(shallow, name, None)
        if isinstance(value, list) and value:
            setattr(shallow, name, [] if name == "handlers" else [ast.Expr(ast.Constant(...))])
    text = ast.unparse(shallow)
    return " ".join(line.strip() for line in text.splitlines())


def _window(before: str, after: str, context: int = 40, longest: int = 140) -> tuple[str, str]:
    """A long statement shown around its change only: ``…<context><change><context>…``."""
    if max(len(before), len(after)) <= longest:
        return before, after
    start = 0
    while start < min(len(before), len(after)) and before[start] == after[start]:
        start += 1
    end = 0
    while end < min(len(before), len(after)) - start and before[-1 - end] == after[-1 - end]:
        end += 1
    lo = max(0, start - context)

    def cut(text: str) -> str:
        hi = min(len(text), len(text) - end + context)
        return ("…" if lo else "") + text[lo:hi] + ("…" if hi < len(text) else "")

    return cut(before), cut(after)


def _sites(source: str) -> tuple[ast.Module, list[_Site]]:
    tree = ast.parse(source)
    skipped = {i + 1 for i, line in enumerate(source.splitlines()) if "pragma: no mutate" in line}
    sites = [s for s in _Sites(tree).found if getattr(s.node, "lineno", 0) not in skipped]
    return tree, sites


def mutants(source: str) -> list[Mutant]:
    """Every mutant of ``source``, named; equal names are numbered (``#2``) in source order."""
    found: list[Mutant] = []
    seen: dict[str, int] = {}
    for index, site in enumerate(_sites(source)[1]):
        before = _header(site.statement)
        replacement = site.replace(site.node)
        if replacement is None and site.node is site.statement:
            after = "(deleted)"
        else:
            placed = _substitute(site.parent, site.node, replacement)
            after = _header(placed if site.node is site.statement else site.statement)
            _substitute(site.parent, placed, site.node)
        if after != "(deleted)":
            before, after = _window(before, after)
        name = f"{site.qualname}: {before} -> {after}"
        n = seen[name] = seen.get(name, 0) + 1
        found.append(
            Mutant(
                index,
                getattr(site.node, "lineno", 0),
                site.qualname,
                site.operator,
                before,
                after if n == 1 else f"{after} #{n}",
            )
        )
    return found


def mutated_tree(source: str, index: int) -> ast.Module:
    """``source`` with mutant ``index`` applied, ready to compile."""
    tree, sites = _sites(source)
    site = sites[index]
    _substitute(site.parent, site.node, site.replace(site.node))
    return ast.fix_missing_locations(tree)
