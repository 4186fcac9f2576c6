"""``python -m benchmarks [--quick] [--docs] [NAME ...]``: run the benchmarks, print the table, save the
figures to ``benchmarks/results/latest.json`` (``--docs`` also puts the table in ``docs/benchmarks.md``;
``--last`` runs nothing and shows the table of the last run).

Each benchmark runs in a child process of its own (``--child NAME``, internal), with a time limit, a
cleaned environment (no ``MODKIE_*``, ``SLACK_*``... setting leaks in) and its log lines collected.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import BENCHMARKS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
DOCS = ROOT / "docs" / "benchmarks.md"
TABLE_START, TABLE_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
#: seconds each benchmark may take before it is stopped (full run; --quick uses a third)
#: (inflight: two fresh processes of 1,000 jobs; with polling, tracking alone takes 1,000 / POLL_RATE_PER_S s)
TIME_LIMITS = {"ack": 900, "claim": 420, "commit": 180, "delivery": 180, "deploy": 420, "headofline": 300,
               "httpclient": 240, "inflight": 720, "ledger": 600, "naive": 180}
SETTING_PREFIXES = ("MODKIE_", "SLACK_", "DISCORD_", "CREDITS_", "IMAGINE_", "HTTP_", "MAX_", "POLL_", "JOB_",
                    "CREATE_RATE", "PUBLIC_URL", "ADMINS", "BANNED_WORDS", "LOG_LEVEL", "DATABASE_")


# ---------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=5)
        if head.returncode == 0:
            commit = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    load = None
    with contextlib.suppress(OSError, AttributeError):
        load = round(os.getloadavg()[0], 1)
    return {
        "load_1min": load,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
    }


# ---------------------------------------------------------------------- the child side


def child(name: str, out: Path, quick: bool) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(BENCHMARKS[name])
    started = time.perf_counter()
    result = module.run(quick)
    result["seconds"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(result, indent=2, default=str))
    return 0


# ---------------------------------------------------------------------- the parent side


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_child(name: str, quick: bool) -> dict[str, Any]:
    limit = TIME_LIMITS[name] // (3 if quick else 1)
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        out, err = Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        cmd = [sys.executable, "-m", "benchmarks", "--child", name, "--out", str(out)] + (["--quick"] if quick else [])
        started = time.perf_counter()
        with err.open("w") as err_file:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), stderr=err_file, start_new_session=True)
            try:
                code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                _stop_group(proc)
                code = None
            except KeyboardInterrupt:
                _stop_group(proc)
                raise
        elapsed = time.perf_counter() - started
        log_lines = err.read_text(errors="replace").splitlines()
        if log_lines:
            print(f"  ({len(log_lines)} line(s) on stderr; first ones:)")
            for line in log_lines[:8]:
                print(f"    {line[:200]}")
        if code == 0 and out.exists():
            return json.loads(out.read_text())
        reason = f"stopped after the {limit} s limit" if code is None else f"exited with {code}"
        return {"error": reason, "seconds": round(elapsed, 1), "stderr_tail": log_lines[-20:], "figures": [
            {"label": f"{name}: did not finish ({reason})", "value": "n/a", "goal": "", "met": None, "data": {}}]}


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the child and the helper processes it started (its own process group), TERM then KILL."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| figure | measured | goal | met |", "|---|---|---|---|"]
    for result in results.values():
        for f in result.get("figures", []):
            met = {True: "yes", False: "**no**", None: ""}[f["met"]]
            rows.append(f"| {f['label']} | {f['value']} | {f['goal']} | {met} |")
    return "\n".join(rows)


def machine_line(info: dict[str, Any], quick: bool) -> str:
    load = f", load {info['load_1min']} at the start" if info.get("load_1min") is not None else ""
    return (f"{info['cpu']}, {info['usable_cores']} cores{load}, {info['memory_gib']} GiB, "
            f"{info['implementation']} {info['python']}, {info['date']}, commit {info['commit']}"
            + (" (--quick)" if quick else ""))


def write_docs(text: str, path: Path = DOCS) -> bool:
    """Put the table between the markers in docs/benchmarks.md, the one place measured figures are kept
    (the README links to it, so the two cannot disagree)."""
    if not path.exists():
        return False
    doc = path.read_text()
    start, end = doc.find(TABLE_START), doc.find(TABLE_END)
    if start < 0 or end < start:
        return False
    path.write_text(doc[: start + len(TABLE_START)] + "\n" + text + "\n" + doc[end:])
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)} "
                        "(default: all)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run with smaller counts")
    parser.add_argument("--docs", action="store_true",
                        help=f"also put the table in {DOCS.relative_to(ROOT)}")
    parser.add_argument("--last", action="store_true",
                        help=f"run nothing: show the table of the last run ({RESULTS.relative_to(ROOT)})")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.out, args.quick)
    if args.last:
        saved = json.loads(RESULTS.read_text())
        info, quick, total, results = saved["machine"], saved["quick"], saved["total_seconds"], saved["results"]
    else:
        unknown = [n for n in args.names if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        names = args.names or list(BENCHMARKS)
        info, quick = machine(), args.quick
        print(f"imagine-bot benchmarks on {machine_line(info, quick)}", flush=True)
        started = time.perf_counter()
        results = {}
        for name in names:
            print(f"[{name}]", flush=True)
            results[name] = run_child(name, quick)
            print(f"  done in {results[name].get('seconds', 0):.0f} s", flush=True)
        total = time.perf_counter() - started
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"machine": info, "quick": quick, "benchmarks": names,
                                       "total_seconds": round(total, 1), "results": results}, indent=2, default=str)
                           + "\n")
    text = table(results)
    print()
    print(text)
    print()
    print(f"Measured on {machine_line(info, quick)}; total {total:.0f} s. "
          f"Figures in {RESULTS.relative_to(ROOT)}.")
    if args.docs:
        body = f"{text}\n\nMeasured on {machine_line(info, quick)}; the run took {total:.0f} s."
        print("Table written to docs/benchmarks.md." if write_docs(body) else
              "docs/benchmarks.md has no table markers; not changed.")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
