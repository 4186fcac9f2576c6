#!/usr/bin/env python3
"""``make mutate``: mutation testing of the money code, and the share of mutants the suite kills.

mutmut (configured in ``pyproject.toml``, ``[tool.mutmut]``) copies the package into ``mutants/``, makes
every small change it knows to the money modules (a ``<`` for a ``<=``, a dropped call, ``None`` for a
value, ...) and runs the fast in-process tests that reach each changed function; a mutant the tests do not
notice survives. Only the money functions below are run, not the whole files: the ledger and the budgets
(reserve, capture and release, refills, grants, caps, periods), refunds, the orchestrator's paths where a
job fails, is refunded, is delivered or races a duplicate, the outbox's sends and retries, and the job
leases. Log lines are not mutated (their wording is no money rule); a test that hangs on a mutant fails
after 20 s (pytest-timeout), which catches that mutant.

Prints the kill share (killed and timed out, over every mutant run) and each survivor; docs/mutation.md
says why each survivor of the last full run is harmless, or names the test that now kills it. Slow (about
40 minutes on 2 quiet cores): not part of ``make test`` or CI. ``python scripts/mutate.py --report`` prints the
figure of the last run again without running anything.
"""

from __future__ import annotations

import ast
import copy
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = Path(sys.executable).parent / "mutmut"
GOAL = 0.90

#: the money functions (mutmut's names: module.x_function or module.xǁClassǁmethod), fnmatch patterns
PATTERNS = [
    *(f"imagine_bot.core.storage.ledger.xǁSqliteLedgerǁ{m}__mutmut_*" for m in (
        "reserve", "capture", "release", "_settle", "_entry", "_touch", "_refill", "_refill_due", "_balance",
        "grant", "verify")),
    "imagine_bot.core.credits.ledger.x_check_size__mutmut_*",
    *(f"imagine_bot.core.storage.budgets.xǁSqliteBudgetsǁ{m}__mutmut_*" for m in (
        "reserve", "check", "settle", "_member_spend", "_touch", "_amount", "set_amount", "set_member_cap",
        "verify")),
    "imagine_bot.core.credits.periods.x_period_start__mutmut_*",
    "imagine_bot.core.credits.periods.x_next_boundary__mutmut_*",
    "imagine_bot.core.credits.refunds.x_*",
    *(f"imagine_bot.core.jobs.orchestrator.xǁOrchestratorǁ{m}__mutmut_*" for m in (
        "submit", "_run", "_fail", "cancel", "_post_result", "halt")),
    *(f"imagine_bot.core.jobs.outbox.xǁOutboxǁ{m}__mutmut_*" for m in ("put", "_send")),
    *(f"imagine_bot.core.storage.jobs.xǁSqliteJobStoreǁ{m}__mutmut_*" for m in (
        "transition", "claim", "claimable", "renew", "release_leases")),
]

KILLED = ("killed", "timeout", "caught by type check", "segfault")
SQL = re.compile(r"\b(select|insert|update|delete|from|where|join|exists|values|set|savepoint|rollback|release)\b",
                 re.I)


def _functions(module: str) -> dict[str, ast.AST]:
    """The mutated copy of a module in mutants/: its original and mutant functions by name."""
    path = ROOT / "mutants" / Path(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text())
    return {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def _sql_folded(node: ast.AST) -> str:
    """The function's AST with the letter case of every SQL string ignored (SQL keywords and names are)."""
    class Fold(ast.NodeTransformer):
        def visit_Constant(self, const: ast.Constant) -> ast.Constant:
            if isinstance(const.value, str) and SQL.search(const.value):
                return ast.Constant(const.value.lower())
            return const

    copied = copy.deepcopy(node)
    copied.name = "f"  # type: ignore[attr-defined]
    return ast.dump(Fold().visit(copied))


def equivalent(names: list[str]) -> set[str]:
    """The mutants that only change the letter case of SQL: the same statement to SQLite, so no test can
    kill them (reported apart, not counted)."""
    same: set[str] = set()
    by_module: dict[str, list[str]] = {}
    for name in names:
        by_module.setdefault(name.split(".x", 1)[0], []).append(name)
    for module, mutants in by_module.items():
        functions = _functions(module)
        for name in mutants:
            function = name.rsplit(".", 1)[1]
            original = functions.get(function.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
            mutant = functions.get(function)
            if original is not None and mutant is not None and _sql_folded(original) == _sql_folded(mutant):
                same.add(name)
    return same


def results() -> dict[str, str]:
    """Every mutant of a money function with its status from the last run."""
    out = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    found = dict(re.findall(r"^\s+(\S+): (.+)$", out, re.M))
    wanted = [re.compile(pattern.replace(".", r"\.").replace("*", ".*") + "$") for pattern in PATTERNS]
    return {name: status for name, status in found.items() if any(w.match(name) for w in wanted)}


def report() -> int:
    statuses = results()
    ran = {n: s for n, s in statuses.items() if s != "not checked"}
    if not ran:
        print("mutate: no results yet: run `make mutate`")
        return 1
    same = equivalent([n for n, s in ran.items() if s not in KILLED])
    ran = {n: s for n, s in ran.items() if n not in same}
    counts = Counter(ran.values())
    killed = sum(counts[s] for s in KILLED)
    survivors = sorted(n for n, s in ran.items() if s not in KILLED)
    for name in survivors:
        print(f"  {ran[name]:10} {name}")
    print("mutate: " + ", ".join(f"{n} {s}" for s, n in counts.most_common())
          + f"; {len(same)} equivalent (the letter case of SQL) left out")
    share = killed / len(ran)
    left = len(statuses) - len(ran) - len(same)
    print(f"mutate: the suite kills {killed} of {len(ran)} mutants of the money code: {share:.1%} "
          f"(goal {GOAL:.0%})" + (f"; {left} of {len(statuses)} not run (an interrupted run: "
                                  "`make mutate` goes on where it stopped)" if left else "")
          + "; `.venv/bin/mutmut show NAME` shows one")
    return 0


def main(argv: list[str]) -> int:
    if "--report" not in argv:
        run = subprocess.run([str(MUTMUT), "run", *PATTERNS], cwd=ROOT)
        if run.returncode not in (0, 1):
            return run.returncode
    return report()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
