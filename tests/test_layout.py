"""The layout keeps the architecture (docs/architecture.md): no import cycles, a core that knows no chat
platform, and a small top level."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"core": "imagine_bot.core", "bots": "imagine_bot.bots"}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, dotted in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([dotted, *parts])] = path
    return found


def imports_of(path: Path, names: set[str]) -> set[str]:
    """Every imagine_bot module this file imports, at module level or inside a function (not under
    ``if TYPE_CHECKING``, which never runs)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in names:
                    out.add(sub)  # `from package import module`
                elif node.module in names:
                    out.add(node.module)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    names = set(mods)
    graph = {name: imports_of(path, names) - {name} for name, path in mods.items()}
    # a package's __init__ that only re-exports its own modules is not a cycle with them
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and t in names)}
    return graph


def test_no_import_cycles_module_level_or_function_local() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_knows_no_chat_platform() -> None:
    platform = re.compile(r"^\s*(from|import)\s+(slack_bolt|slack_sdk|discord|imagine_bot\.bots)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "core").rglob("*.py") if platform.search(p.read_text())]
    assert offenders == []


def test_core_top_level_is_small() -> None:
    top = sorted(p.name for p in (ROOT / "core").glob("*.py"))
    assert len(top) <= 12, top


SQL = re.compile(r"^\s*(import sqlite3|import sqlite_utils|from sqlite_utils|import psycopg|from psycopg)"
                 r"|\b(INSERT INTO|DELETE FROM|BEGIN IMMEDIATE|SELECT \S+.* FROM|UPDATE \w+ SET)\b", re.M)
#: the database helpers' transactions called as functions (``transaction(db)``), not ``Stores.transaction()``
RAW_TRANSACTION = re.compile(r"(?<![.\w])(?<!def )(transaction|snapshot)\("
                             r"|^\s*from imagine_bot\.core\.storage\.db import .*\b(transaction|snapshot|open_db)\b",
                             re.M)


def _outside_storage(top: str, pattern: re.Pattern[str]) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / top).rglob("*.py")
                  if "storage" not in p.relative_to(ROOT).parts and pattern.search(p.read_text()))


@pytest.mark.parametrize("top", ["core", "bots"])
def test_all_sql_lives_in_core_storage(top: str) -> None:
    assert _outside_storage(top, SQL) == []


@pytest.mark.parametrize("top", ["core", "bots"])
def test_transactions_are_taken_only_in_core_storage(top: str) -> None:
    """Domain code spans stores with ``Stores.transaction()``; the database's own helpers stay in storage."""
    assert _outside_storage(top, RAW_TRANSACTION) == []


def test_the_checks_see_sql_and_raw_transactions() -> None:
    assert SQL.search('db.execute("SELECT balance FROM accounts")') and SQL.search("import sqlite3\n")
    assert not SQL.search("select the model from the catalog")
    assert RAW_TRANSACTION.search("    with transaction(db):")
    assert not RAW_TRANSACTION.search("    with self.store.transaction():")
