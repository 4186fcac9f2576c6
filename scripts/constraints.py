"""Keep ``constraints.txt`` (the exact versions the Docker image installs) in step with ``pyproject.toml``.

    python scripts/constraints.py           add a pin for every runtime dependency that has none (or whose
                                            pin no longer fits a range), at the version installed in this
                                            environment, and drop pins nothing needs; existing pins stay
    python scripts/constraints.py --check   say what is missing, change nothing (exit 1 if anything is)
    python scripts/constraints.py --upgrade re-pin everything at the installed versions

``make test`` runs the first form, so a dependency added to ``pyproject.toml`` is pinned on the next
``make test`` (commit the changed file) and never breaks the build. ``make constraints`` upgrades.
Run it with the project's ``.venv`` python: the runtime dependencies (and what they need, transitively) are
read from the installed packages' metadata, so the pins are the versions the test suite ran against.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
#: extras the image installs too (``pip install '.[postgres]'``): pinned like the dependencies
RUNTIME_EXTRAS = ("postgres",)
HEADER = """\
# The exact versions of imagine-bot's runtime dependencies that the Docker image installs
# (`pip install -c constraints.txt .`). Written by scripts/constraints.py: `make test` adds a pin for a
# dependency added to pyproject.toml (commit this file then); `make constraints` re-pins all of them.
"""


def runtime_closure(pyproject: Path) -> dict[str, tuple[str, SpecifierSet]]:
    """Every package the runtime dependencies (and the ``RUNTIME_EXTRAS``) need: name -> (installed
    version, all ranges asked of it)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    roots = [*project["dependencies"], *(raw for extra in RUNTIME_EXTRAS for raw in extras.get(extra, []))]
    found: dict[str, tuple[str, SpecifierSet]] = {}
    todo = [Requirement(raw) for raw in roots]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"constraints: {req.name} is not installed here: run `make .venv/.installed` first, "
                     "then this with .venv/bin/python")
        seen = name in found
        version, ranges = found.get(name, (dist.version, SpecifierSet()))
        found[name] = (version, ranges & req.specifier)
        if seen and not req.extras:
            continue
        for raw in dist.requires or []:
            sub = Requirement(raw)
            wanted = sub.marker is None or sub.marker.evaluate({"extra": ""}) or any(
                sub.marker.evaluate({"extra": extra}) for extra in req.extras)
            if wanted:
                sub.marker = None
                todo.append(sub)
    return found


def read_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, version = line.partition("==")
                pins[canonicalize_name(name)] = version.strip()
    return pins


def plan(closure: dict[str, tuple[str, SpecifierSet]], pins: dict[str, str],
         upgrade: bool) -> tuple[dict[str, str], list[str]]:
    """The pins to write and, in words, what changes."""
    wanted: dict[str, str] = {}
    changes: list[str] = []
    for name, (installed, ranges) in sorted(closure.items()):
        pinned = pins.get(name)
        if pinned and not upgrade and ranges.contains(Version(pinned), prereleases=True):
            wanted[name] = pinned
            continue
        wanted[name] = installed
        if pinned is None:
            changes.append(f"{name}=={installed} (new: not pinned yet)")
        elif pinned != installed:
            reason = "" if upgrade else f" ({pinned} does not satisfy {ranges})"
            changes.append(f"{name} {pinned} -> {installed}{reason}")
    changes += [f"{name}=={pins[name]} dropped (no longer needed)" for name in sorted(set(pins) - set(closure))]
    return wanted, changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report, change nothing; exit 1 if out of step")
    parser.add_argument("--upgrade", action="store_true", help="re-pin every package at its installed version")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--constraints", type=Path, default=ROOT / "constraints.txt")
    args = parser.parse_args(argv)
    wanted, changes = plan(runtime_closure(args.pyproject), read_pins(args.constraints), args.upgrade)
    if args.check:
        if changes:
            print(f"{args.constraints.name} is out of step with {args.pyproject.name}: " + "; ".join(changes)
                  + ". Run `make test` (adds the missing pins) or `make constraints`, then commit it.")
            return 1
        print(f"{args.constraints.name}: all {len(wanted)} runtime packages pinned")
        return 0
    if changes or not args.constraints.exists():
        body = "".join(f"{name}=={version}\n" for name, version in wanted.items())
        args.constraints.write_text(HEADER + body)
        print(f"{args.constraints.name} updated (commit it): " + "; ".join(changes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
