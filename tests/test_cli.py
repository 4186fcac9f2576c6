"""The command line as a new user meets it: the real console script in subprocesses, admin commands in-process."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imagine_bot.bots.cli.main import main
from imagine_bot.core.settings import load_settings
from tests.conftest import FAST_SANDBOX_ENV

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "imagine-bot"


def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        cwd: Path) -> subprocess.CompletedProcess:
    """The console script; with ``--sandbox`` its jobs take 0.14 s, not the demo's 2.8 s (FAST_SANDBOX_ENV)."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("MODKIE_", "SLACK_", "DISCORD_", "CREDITS_", "SANDBOX_"))}
    return subprocess.run([str(SCRIPT), *args], input=stdin or "", capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**clean, **FAST_SANDBOX_ENV, **(env or {})})


def test_imagine_in_the_sandbox_makes_a_real_png(tmp_path):
    result = cli("--sandbox", "imagine", "a lighthouse at dusk --ar 9:16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("saved ")]
    assert len(saved) == 1 and Path(saved[0]).parent == tmp_path / "out"
    with Image.open(saved[0]) as img:
        assert img.format == "PNG" and img.height > img.width
    assert "You have 162 credits" in result.stdout
    assert "Traceback" not in result.stderr
    # the sandbox walked its task through stages SANDBOX_DELAY_SCALE (0.05) times the demo's
    [task] = json.loads((tmp_path / "data" / "imagine-bot-sandbox.json").read_text())["tasks"]
    assert task["delays"] == pytest.approx({"waiting": 0.02, "queuing": 0.02, "generating": 0.1})


def test_bad_flag_is_explained_and_nothing_charged(tmp_path):
    result = cli("--sandbox", "imagine", "a cat --ar 5:4", env={"IMAGINE_USER": "dave"}, cwd=tmp_path)
    assert result.returncode == 1
    assert "is not a valid aspect ratio" in result.stdout and "16:9" in result.stdout
    show = cli("credits", "history", "dave", cwd=tmp_path)
    assert show.returncode == 0 and "reserve" not in show.stdout, show.stdout


def test_no_key_outside_the_sandbox_says_how_in_one_line(tmp_path):
    result = cli("imagine", "a cat", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "MODKIE_API_KEY" in lines[0] and "--sandbox" in lines[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [("CREDITS_PERIOD", "yearly"), ("HTTP_PORT", "99999"), ("ADMINS", "bob"), ("MODKIE_MODEL", "nope/1"),
     ("MODKIE_ASPECT_RATIOS", "5:4"), ("MODKIE_BASE_URL", "ftp://x"), ("CREDITS_ALLOWANCE", str(10**40)),
     ("SPEND_CAP", str(10**40)), ("DEFAULT_SCOPE_BUDGET", "1000000001")],
)
def test_bad_setting_fails_at_start_naming_it(tmp_path, name, value):
    result = cli("--sandbox" if name != "MODKIE_BASE_URL" else "-v", "imagine", "a cat", env={name: value},
                 cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and name in result.stderr, result.stderr


def test_settings_come_from_dotenv(tmp_path):
    (tmp_path / ".env").write_text("MODKIE_BASE_URL=sandbox\nCREDITS_ALLOWANCE=50\n")
    result = cli("imagine", "a cat", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "You have 32 credits" in result.stdout


def test_chat_transcript(tmp_path):
    script = "/help\n/credits\n/imagine a cat --ar 5:4\n/imagine a cat --ar 16:9\nhello\n/quit\n"
    result = cli("--sandbox", "chat", stdin=script, env={"IMAGINE_USER": "carol"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "as terminal:carol" in out
    assert "/imagine <prompt>" in out
    assert "You have 180 credits" in out
    assert "is not a valid aspect ratio" in out
    assert "saved " in out and "162 left" in out
    assert "Commands:" in out


@pytest.mark.slow
def test_whoever_runs_the_terminal_chat_is_an_operator(tmp_path):
    """The README: whoever runs the command line is an operator, so `/imagine admin ...` works in `chat`
    without being listed in ADMINS; a report it attaches lands in out/, not loose in the checkout."""
    script = ("/imagine admin grant dave 50 welcome\n/imagine admin show dave\n/imagine admin report all\n"
              "/imagine admin budget set discord:123 900\n/quit\n")
    result = cli("--sandbox", "chat", stdin=script, env={"IMAGINE_USER": "carol"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "admins can do that" not in result.stdout and "operators can do that" not in result.stdout
    assert "230" in result.stdout  # dave: 180 + 50
    (report,) = (tmp_path / "out").glob("*.csv")
    assert "terminal:dave" in report.read_text() and not list(tmp_path.glob("*.csv"))
    shown = cli("credits", "history", "dave", cwd=tmp_path)
    assert "terminal:carol" in shown.stdout and "welcome" in shown.stdout  # the grant, by the local user
    budget = cli("budget", "show", "discord:123", cwd=tmp_path)
    assert "900" in budget.stdout
    # whoever runs it: another local user is an operator of their own chat too
    other = cli("--sandbox", "chat", stdin="/imagine admin grant erin 5\n/quit\n", env={"IMAGINE_USER": "dave"},
                cwd=tmp_path)
    assert "erin" in other.stdout and "can do that" not in other.stdout


def test_run_without_front_ends_says_what_to_set(tmp_path):
    result = cli("--sandbox", "run", cwd=tmp_path)
    assert result.returncode == 2
    assert "SLACK_BOT_TOKEN" in result.stderr and "DISCORD_TOKEN" in result.stderr
    # and what works without either: the terminal chat and the dashboard alone
    assert "imagine-bot chat" in result.stderr and "imagine-bot dashboard" in result.stderr


def _on(backend: str, path: str) -> list[str]:
    """The command line's database: ``--db FILE`` for SQLite; nothing for PostgreSQL (``DATABASE_URL``)."""
    return ["--db", path] if backend == "sqlite" else []


def test_admin_credits_commands(tmp_path, capsys, monkeypatch, backend):
    monkeypatch.setenv("IMAGINE_USER", "ops")
    db = _on(backend, str(tmp_path / "admin.db"))
    assert main([*db, "credits", "grant", "discord:42", "90", "--note", "welcome"]) == 0
    assert "discord:42: 270 available" in capsys.readouterr().out
    assert main([*db, "credits", "allowance", "slack:T1:U1", "360"]) == 0
    assert main([*db, "credits", "history", "discord:42"]) == 0
    out = capsys.readouterr().out
    assert "grant" in out and "cli:ops" in out and "welcome" in out
    assert main([*db, "credits", "report"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["account"] for r in rows} == {"discord:42", "slack:T1:U1"}
    assert main([*db, "credits", "verify"]) == 0
    assert main([*db, "credits", "grant", "discord:42", "-1000"]) == 1
    assert "at most" in capsys.readouterr().err
    assert main([*db, "jobs", "list"]) == 0
    assert main([*db, "jobs", "show", "jnope"]) == 1


def test_sandbox_command_serves_the_gateway_contract(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([str(SCRIPT), "sandbox", "--port", str(port), "--delay-scale", "0.01"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert "listening on" in proc.stdout.readline()
        import httpx

        base = f"http://127.0.0.1:{port}"
        created = httpx.post(base + "/api/v1/jobs/createTask", headers={"Authorization": "Bearer x"},
                             json={"model": "seedream/4.5-text-to-image",
                                   "input": {"prompt": "hi", "aspect_ratio": "1:1", "quality": "basic"}}).json()
        assert created["code"] == 200 and created["data"]["taskId"]
        bad = httpx.post(base + "/api/v1/jobs/createTask", headers={"Authorization": "Bearer x"},
                         json={"model": "seedream/4.5-text-to-image", "input": {"prompt": "hi"}}).json()
        assert bad["code"] == 422 and "aspect_ratio" in bad["msg"]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_global_options_may_stand_after_the_command():
    from imagine_bot.bots.cli.main import hoist_global_options

    assert hoist_global_options(["run", "--only", "slack", "--sandbox"]) == ["--sandbox", "run", "--only", "slack"]
    assert hoist_global_options(["credits", "show", "--db", "x.db", "-v"]) == ["--db", "x.db", "-v", "credits", "show"]
    assert hoist_global_options(["imagine", "--", "--sandbox"]) == ["imagine", "--", "--sandbox"]


def _saved(result: subprocess.CompletedProcess) -> str:
    return next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("saved "))


@pytest.mark.slow
def test_an_edit_of_the_last_image_keeps_its_shape_and_is_charged_in_the_same_database(tmp_path):
    first = cli("--sandbox", "imagine", "a lighthouse at dusk --ar 16:9", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    made = _saved(first)
    # the last image also has a name that never changes, for the next command to use as written
    assert (tmp_path / "out" / "latest.png").read_bytes() == Path(made).read_bytes()
    assert "You have 162 credits" in first.stdout
    edit = cli("--sandbox", "imagine", "as a watercolour", "--image", "out/latest.png", cwd=tmp_path)
    assert edit.returncode == 0, edit.stdout + edit.stderr
    assert "an edit of 1 reference image" in edit.stdout and "aspect ratio 16:9" in edit.stdout
    saved = _saved(edit)
    with Image.open(made) as before, Image.open(saved) as after:
        assert before.size == after.size == (1024, 576)  # no --ar: the reference's shape, not a 1:1 square
    assert "You have 162 credits" not in edit.stdout and "You have 144 credits" in edit.stdout  # one database
    assert (tmp_path / "out" / "latest.png").read_bytes() == Path(saved).read_bytes()
    square = cli("--sandbox", "imagine", "as a mosaic --ar 1:1", "--image", "out/latest.png", cwd=tmp_path)
    with Image.open(_saved(square)) as typed:
        assert typed.size == (1024, 1024)  # a typed --ar still wins
    missing = cli("--sandbox", "imagine", "as a watercolour", "--image", "out/nope.png", cwd=tmp_path)
    assert missing.returncode == 1 and "I cannot read the image `out/nope.png`" in missing.stdout


def test_budget_commands_and_verify_covers_budgets(tmp_path, capsys, monkeypatch, backend):
    from imagine_bot.core.access.identity import UserRef
    from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
    from imagine_bot.core.storage.ledger import SqliteLedger as Ledger
    from imagine_bot.core.storage.sqlite import SqliteStores

    monkeypatch.setenv("IMAGINE_USER", "ops")
    path = str(tmp_path / "budget.db")
    db = _on(backend, path)
    assert main([*db, "budget", "set", "discord:123456", "900", "--period", "month"]) == 0
    assert "discord:123456: 900 per month, 0 spent" in capsys.readouterr().out
    assert main([*db, "budget", "set", "not-a-scope", "5"]) == 1
    assert "not a scope" in capsys.readouterr().err

    # two jobs in that server, one charged and one refunded, as the bot would do them
    opened = SqliteStores.open(load_settings(_env_file=None, IMAGINE_DB_PATH=path)).db  # the same database
    ledger = Ledger(opened, budgets=Budgets(opened, default_amount=None), allowance=180, period="month")
    for job in ("j1", "j2"):
        ledger.reserve(UserRef("discord", "-", "42"), job, 18, scopes=("discord:123456",), channel="777")
    ledger.capture("j1")
    ledger.release("j2")

    assert main([*db, "budget", "show"]) == 0
    out = capsys.readouterr().out
    assert "discord:123456" in out and "882" in out and "global" in out
    assert main([*db, "budget", "report", "discord:123456"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["account"], r["channel"], r["credits_spent"], r["images"]) for r in rows] == [
        ("discord:42", "777", "18", "1")]
    assert main([*db, "credits", "verify"]) == 0
    capsys.readouterr()

    ledger.db.execute("UPDATE budgets SET spent = spent - 18 WHERE scope = 'discord:123456'")  # drift
    assert main([*db, "credits", "verify"]) == 1
    assert "budget discord:123456: spent 0 but its rows sum to 18" in capsys.readouterr().out

    assert main([*db, "credits", "show"]) == 0
    assert "ModKie account: not read yet" in capsys.readouterr().out
    ledger.db.execute("INSERT INTO gateway_account (id, balance, checked_at, paused, detail) VALUES"
                      " (1, 5, '2026-01-01T00:00:00+00:00', 'out_of_credits', 'HTTP 402')")
    assert main([*db, "credits", "show"]) == 0
    out = capsys.readouterr().out
    assert "ModKie account: 5 credits" in out and "DEGRADED: new images are paused (out of credits" in out
    opened.close()


HUGE = str(10**40)


@pytest.mark.parametrize("args", [
    ["budget", "set", "discord:123456", HUGE], ["credits", "allowance", "bob", HUGE],
    ["credits", "grant", "bob", HUGE], ["credits", "grant", "bob", "9" * 5000],
    ["credits", "history", "--limit", HUGE], ["jobs", "list", "--limit", "9" * 5000], ["sandbox", "--port", HUGE],
])
def test_numbers_past_reason_get_one_plain_line(tmp_path, capsys, args):
    assert main(["--db", str(tmp_path / "n.db"), *args]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    assert lines[0].startswith("imagine-bot: ") and "is not a whole number from" in lines[0]


def test_numbers_past_reason_on_the_real_command_line(tmp_path):
    budget = cli("budget", "set", "discord:123456", HUGE, cwd=tmp_path)
    assert budget.returncode == 1 and budget.stdout == ""
    assert budget.stderr == ("imagine-bot: Credits: `10000000000000000000…` is not a whole number from 0 to "
                             "1,000,000,000.\n")
    ratio = cli("--sandbox", "imagine", f"a cat --ar {'1' * 5000}:1", cwd=tmp_path)
    assert ratio.returncode == 1 and "Traceback" not in ratio.stderr, ratio.stderr
    assert "is not a valid aspect ratio" in ratio.stdout and "16:9" in ratio.stdout


def test_db_names_an_sqlite_file_even_where_database_url_is_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgresql://bot:pw@127.0.0.1:9/nowhere")  # unreachable
    assert main(["credits", "show"]) == 2
    assert "cannot connect to PostgreSQL at 127.0.0.1:9" in capsys.readouterr().err
    assert main(["--db", str(tmp_path / "local.db"), "credits", "grant", "bob", "5"]) == 0
    assert (tmp_path / "local.db").exists()
