"""The package installs cleanly: one distinctive top-level name (``imagine_bot``), never ``core`` or ``bots``.

Builds the wheel and the sdist with ``python -m build``, installs the wheel into a fresh venv (no index:
the dependencies come from this venv's site-packages through a .pth file, so nothing is downloaded),
then runs ``imagine-bot --help`` and one sandbox ``imagine`` from it, outside the repository.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import FAST_SANDBOX_ENV

ROOT = Path(__file__).resolve().parents[1]
#: the builds write into the checkout (build/, the egg-info, the sdist's staging folder imagine_bot-0.1.0/,
#: which git does not ignore): one after the other, and never while tests/test_first_hour.py copies it
CHECKOUT = pytest.mark.xdist_group("checkout")


def _declared_packages() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_source_folder_is_a_declared_package():
    """Every folder of code (an __init__.py) or of data shipped with it (templates) is listed: setuptools
    warns about a data folder it finds unlisted, 40 lines on every `pip install`."""
    found = {"imagine_bot"}
    for top in ("core", "bots"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            found.add(".".join(("imagine_bot", *rel)))
        for data in (ROOT / top).rglob("templates"):
            found.add(".".join(("imagine_bot", *data.relative_to(ROOT).parts)))
    assert found == _declared_packages()


@CHECKOUT
def test_the_build_prints_no_warning(tmp_path):
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(tmp_path),
                            str(ROOT)], capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr[-3000:]
    said = built.stdout + built.stderr
    assert "Warning" not in said and "absent from the `packages`" not in said, said[-3000:]
    wheel = next(tmp_path.glob("*.whl"))
    assert "imagine_bot/core/web/dashboard/templates/base.html" in zipfile.ZipFile(wheel).namelist()


def test_no_absolute_import_of_the_bare_folder_names():
    for top in ("core", "bots", "tests", "benchmarks"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    assert name.split(".")[0] not in ("core", "bots"), f"{path}: import {name}"


@pytest.mark.slow
@CHECKOUT
def test_wheel_installs_under_one_name_and_runs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=240)
    wheel = next(dist.glob("*.whl"))
    assert next(dist.glob("*.tar.gz"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "core" not in tops and "bots" not in tops
    assert "imagine_bot" in tops
    assert {"imagine_bot/bots/slack/manifest.yml", "imagine_bot/bots/slack/manifest-distributed.yml"} <= set(
        zipfile.ZipFile(wheel).namelist())

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # no pip of its own (ensurepip takes 8 s of CPU) ...
    py = env_dir / "bin" / "python"
    # the dependencies: this venv's site-packages, reached through a .pth (no network, no index)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # ... this venv's pip installs the wheel into it (`--python`: as that interpreter, into its site-packages)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "--quiet",
                    str(wheel)], check=True, capture_output=True, timeout=120)
    # paths named in a .pth are not scanned for .pth files: the repo's editable finder stays out
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = ("import importlib.util, imagine_bot.core.app as a; "
             "print(a.__file__); print(importlib.util.find_spec('core'), importlib.util.find_spec('bots'))")
    out = subprocess.run([str(py), "-c", probe], cwd=work, env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[0].startswith(str(env_dir)), out
    assert out[1] == "None None", out
    exe = env_dir / "bin" / "imagine-bot"
    help_text = subprocess.run([str(exe), "--help"], cwd=work, env=env, check=True, capture_output=True,
                               text=True, timeout=60).stdout
    assert "imagine" in help_text
    done = subprocess.run([str(exe), "--sandbox", "imagine", "a fox in the snow --ar 9:16"], cwd=work,
                          env={**env, "IMAGINE_DB_PATH": str(work / "w.db"), **FAST_SANDBOX_ENV}, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert list((work / "out").glob("*.png"))
