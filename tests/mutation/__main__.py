"""`make mutation`: mutate the safety-critical modules one change at a time and run their unit tests.

    PYTHONPATH=tests python -m mutation [--jobs N] [FILE ...]

Each file of ``targets.toml`` is handled by a worker process that imports everything its tests
need except the file and what imports it, then forks once per mutant: the child loads the mutated
module (in memory, nothing on disk changes) and runs pytest on the file's tests only, stopping at
the first failure. A mutant is *killed* when a test fails (or the run errors on import, or it
exceeds its time), *survives* when every test passes. Mutants listed in ``equivalent.toml`` change
no behaviour and are left out of the score. Prints per-file scores and every surviving mutant."""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
import types
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from mutation.operators import Mutant, mutants, mutated_tree
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SOURCE_ROOTS = (ROOT / "shared" / "src", *sorted((ROOT / "services").glob("*/src")))
KILLED, SURVIVED, TIMEOUT, ERROR = "killed", "survived", "timeout", "error"

console = Console(stderr=True)


@dataclass(frozen=True)
class Target:
    file: str
    tests: tuple[str, ...]
    min_score: float | None = None


@dataclass
class FileResult:
    target: Target
    total: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    survivors: list[dict[str, Any]] = field(default_factory=list)
    equivalent: int = 0
    note: str = ""
    names: set[str] = field(default_factory=set)
    stale: list[str] = field(default_factory=list)  # allow-list entries that name no mutant

    @property
    def scored(self) -> int:
        return self.total - self.equivalent

    @property
    def killed(self) -> int:
        return self.outcomes.get(KILLED, 0) + self.outcomes.get(TIMEOUT, 0)

    @property
    def score(self) -> float:
        return 100.0 * self.killed / self.scored if self.scored else 100.0


def load_targets() -> list[Target]:
    data = tomllib.loads((HERE / "targets.toml").read_text())
    return [Target(t["file"], tuple(t["tests"]), t.get("min_score")) for t in data["target"]]


def load_equivalent() -> dict[tuple[str, str], str]:
    """(file, mutant name) -> why the mutant changes no behaviour."""
    data = tomllib.loads((HERE / "equivalent.toml").read_text())
    return {(e["file"], e["mutant"]): e["reason"] for e in data.get("equivalent", [])}


# --- the worker: one target file ------------------------------------------------------------------


def module_name(path: Path) -> str:
    for root in SOURCE_ROOTS:
        if path.is_relative_to(root):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join(parts)
    raise ValueError(f"{path} is under none of the source roots")


def _imports(path: Path, package: str) -> set[str]:
    """Modules ``path`` imports (absolute names; ``from a import b`` gives both a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """changegate module -> the modules it imports, with the packages each import runs."""
    graph: dict[str, set[str]] = {}
    for root in SOURCE_ROOTS:
        for path in root.rglob("*.py"):
            name = module_name(path)
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            graph[name] = _with_packages(_imports(path, package))
    return graph


def _with_packages(names: set[str]) -> set[str]:
    out = set(names)
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


def dependents(graph: dict[str, set[str]], target: str) -> set[str]:
    """The target and every changegate module that imports it, directly or not."""
    found, frontier = {target}, [target]
    while frontier:
        current = frontier.pop()
        for name, imported in graph.items():
            if current in imported and name not in found:
                found.add(name)
                frontier.append(name)
    return found


class _MutantLoader(importlib.abc.Loader):
    def __init__(self, code: types.CodeType) -> None:
        self.code = code

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        exec(self.code, module.__dict__)


class _MutantFinder(importlib.abc.MetaPathFinder):
    """Serves the mutated code for exactly one module name."""

    def __init__(self, name: str, path: Path, code: types.CodeType) -> None:
        self.name, self.path, self.code = name, path, code

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, _MutantLoader(self.code), origin=str(self.path))
        spec.has_location = True
        return spec


def _warm_up(target: Target, name: str) -> None:
    """Import, once, what every mutant's tests import and the mutant does not change."""
    graph = import_graph()
    changed = dependents(graph, name)
    wanted: set[str] = set()
    test_paths = [ROOT / t for t in target.tests] + [
        ROOT / Path(t).parent / "conftest.py" for t in target.tests
    ]
    for path in test_paths:
        if path.exists():
            wanted |= _imports(path, "")
    for module in changed:
        wanted |= graph.get(module, set())
    closure: set[str] = set()
    frontier = list(wanted)
    while frontier:
        current = frontier.pop()
        parts = current.split(".")
        if current in closure or any(".".join(parts[:i]) in changed for i in range(1, len(parts) + 1)):
            continue
        if parts[0] == "changegate" and current not in graph:
            continue  # a name imported from a module, not a module
        closure.add(current)
        frontier.extend(graph.get(current, ()))
    warnings.simplefilter("ignore")  # what an import warns about is not the mutants' business
    import pytest  # noqa: F401  (imported here: the parent process stays free of it)
    import pytest_asyncio.plugin  # noqa: F401

    for module in sorted(closure):
        if module.split(".")[0] in {"conftest", "mutation"} or module.startswith("test_"):
            continue
        try:
            importlib.import_module(module)
        except Exception:  # a name that is not a module, or one that fails here: the child imports it
            continue
    leaked = changed & set(sys.modules)
    if leaked:
        raise RuntimeError(f"warm-up imported what the mutants change: {sorted(leaked)}")


def _pytest_args(target: Target) -> list[str]:
    tests = [t for t in target.tests if (ROOT / t).exists()]
    confcut = os.path.commonpath([str(Path(t).parent) for t in tests])
    return [
        *tests,
        "-x",
        "-q",
        "--no-header",
        "-p",
        "no:cacheprovider",
        "-p",
        "pytest_asyncio.plugin",
        f"--confcutdir={confcut}",
        "-o",
        "addopts=",
        "-W",
        "ignore::pytest.PytestConfigWarning",
    ]


def _run(args: list[str], finder: _MutantFinder | None, timeout: int) -> str:
    """Run pytest in a forked child (with the mutant installed): killed, survived, timeout, error."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            signal.alarm(timeout)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            if finder is not None:
                sys.meta_path.insert(0, finder)
            import pytest

            code = int(pytest.main(args))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return TIMEOUT if os.WTERMSIG(status) == signal.SIGALRM else KILLED
    code = os.WEXITSTATUS(status)
    return {0: SURVIVED, 1: KILLED, 2: KILLED}.get(code, ERROR)


def worker(file: str) -> None:
    """Emit one JSON line per mutant of ``file`` (first line: the count, or an error)."""
    target = next(t for t in load_targets() if t.file == file)
    path = ROOT / file
    source = path.read_text()
    found = mutants(source)
    name = module_name(path)
    tests = [t for t in target.tests if (ROOT / t).exists()]
    missing = sorted(set(target.tests) - set(tests))

    def emit(**record: Any) -> None:
        print(json.dumps(record), flush=True)

    if not tests:
        emit(total=len(found), note="no unit tests exist for it")
        for m in found:
            emit(**_record(m, SURVIVED))
        return
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    os.chdir(ROOT)
    _warm_up(target, name)
    args = _pytest_args(target)
    started = time.monotonic()
    baseline = _run(args, None, 600)
    elapsed = time.monotonic() - started
    if baseline != SURVIVED:
        emit(total=len(found), error=f"the tests fail without any mutant ({' '.join(args)})")
        return
    emit(total=len(found), note=f"tests missing: {', '.join(missing)}" if missing else "")
    timeout = max(10, math.ceil(elapsed * 10))
    for m in found:
        try:
            code = compile(mutated_tree(source, m.index), str(path), "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            emit(**_record(m, KILLED))  # does not even compile
            continue
        emit(**_record(m, _run(args, _MutantFinder(name, path, code), timeout)))


def _record(m: Mutant, outcome: str) -> dict[str, Any]:
    return {"index": m.index, "line": m.line, "name": m.name, "operator": m.operator, "outcome": outcome}


# --- the coordinator ------------------------------------------------------------------------------


def _run_worker(
    target: Target, result: FileResult, equivalent: dict[tuple[str, str], str], progress: Progress
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
    }
    task = progress.add_task(target.file, total=None)
    with subprocess.Popen(
        [sys.executable, "-m", "mutation", "--worker", target.file],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            if "total" in record:
                result.total = record["total"]
                result.note = record.get("error") or record.get("note", "")
                if "error" in record:
                    result.outcomes[ERROR] = result.total
                progress.update(task, total=result.total)
                continue
            result.names.add(record["name"])
            outcome = record["outcome"]
            progress.advance(task)
            if outcome == SURVIVED and (target.file, record["name"]) in equivalent:
                result.equivalent += 1
                continue
            result.outcomes[outcome] = result.outcomes.get(outcome, 0) + 1
            if outcome in (SURVIVED, ERROR):
                result.survivors.append(record)
    if proc.returncode != 0 and ERROR not in result.outcomes:
        result.note = f"the worker failed (exit {proc.returncode}); see its output above"
        result.outcomes[ERROR] = max(1, result.total - sum(result.outcomes.values()) - result.equivalent)


def run(targets: list[Target], jobs: int) -> list[FileResult]:
    equivalent = load_equivalent()
    results = [FileResult(t) for t in targets]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress, ThreadPoolExecutor(jobs) as pool:
        for future in [pool.submit(_run_worker, r.target, r, equivalent, progress) for r in results]:
            future.result()
    for r in results:
        r.stale = sorted(m for f, m in equivalent if f == r.target.file and m not in r.names)
    return results


def report(results: list[FileResult]) -> bool:
    table = Table(title="Mutation scores (killed / mutants; equivalent mutants excluded)")
    for column in ("file", "mutants", "killed", "survived", "equivalent", "score", "minimum"):
        table.add_column(column, justify="left" if column == "file" else "right")
    ok = True
    for r in results:
        below = r.target.min_score is not None and r.score < r.target.min_score
        ok &= not below and ERROR not in r.outcomes
        table.add_row(
            r.target.file.partition("src/changegate/")[2] or r.target.file,
            str(r.total),
            str(r.killed),
            str(r.outcomes.get(SURVIVED, 0)),
            str(r.equivalent),
            f"[red]{r.score:.1f}%[/]" if below else f"{r.score:.1f}%",
            f"{r.target.min_score:.0f}%" if r.target.min_score is not None else "",
        )
    out = Console()
    out.width = max(out.width, 100)
    out.print(table)
    for r in results:
        if r.note:
            print(f"{r.target.file}: {r.note}")
        for name in r.stale:
            print(f"{r.target.file}: equivalent.toml names no mutant: {name}")
    survivors = [(r.target.file, s) for r in results for s in r.survivors]
    if survivors:
        print(f"\nSurviving mutants ({len(survivors)}):")
        for file, s in survivors:
            tag = "" if s["outcome"] == SURVIVED else f" [{s['outcome']}]"
            print(f"  {file}:{s['line']}{tag}  {s['name']}")
    return ok


app = typer.Typer(add_completion=False)


@app.command()
def main(
    files: Annotated[
        list[str] | None, typer.Argument(help="only targets whose path contains one of these")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="files mutated at once")] = 1,
    worker_file: Annotated[str | None, typer.Option("--worker", hidden=True)] = None,
) -> None:
    if worker_file is not None:
        worker(worker_file)
        return
    targets = [t for t in load_targets() if not files or any(f in t.file for f in files)]
    if not targets:
        raise typer.BadParameter(f"no target matches {files}")
    if not report(run(targets, max(1, jobs))):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
