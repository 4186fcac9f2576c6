"""core/storage/installations.py: installations of a chat app in many workspaces, tokens sealed with the
operator's key, and the one-time states of the install flows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet

from imagine_bot.core.errors import ConfigError
from imagine_bot.core.storage.db import open_db
from imagine_bot.core.storage.installations import (
    InstallationRow,
    installed_places,
)
from imagine_bot.core.storage.installations import (
    SqliteInstallations as Installations,
)
from imagine_bot.core.storage.installations import (
    SqliteOAuthStates as OAuthStates,
)
from imagine_bot.core.storage.secretbox import SecretBox

KEY = Fernet.generate_key().decode()
TOKEN = "xoxb-1111-secret-bot-token"


def row(workspace: str = "T1", *, org: str = "", installer: str = "U1", token: str = TOKEN, name: str = "One",
        at: datetime | None = None, org_wide: bool = False) -> InstallationRow:
    return InstallationRow("slack", org, workspace, installer, org_wide, name, {"team_name": name, "n": 1},
                           {"bot_token": token, "bot_refresh_token": "xoxe-1-refresh"},
                           at or datetime(2025, 1, 1, tzinfo=UTC))


@pytest.fixture
def db(database):
    """The tests here run on SQLite and on PostgreSQL (``database`` in conftest)."""
    return database


@pytest.fixture
def file_db(tmp_path):
    """An SQLite file (a test that reads the bytes at rest)."""
    db = open_db(tmp_path / "i.db")
    yield db
    db.close()


def test_tokens_are_sealed_at_rest_and_opened_on_read(file_db, tmp_path):
    db = file_db
    store = Installations(db, SecretBox(KEY, setting="SLACK_TOKEN_KEY"), "slack")
    store.save(row())
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = db.execute("SELECT bot_token, bot_refresh_token, data FROM installations").fetchone()
    assert raw[0].startswith("enc1:") and raw[1].startswith("enc1:")
    assert TOKEN.encode() not in (tmp_path / "i.db").read_bytes()
    found = store.latest(org=None, workspace="T1")
    assert found is not None and found.tokens == {"bot_token": TOKEN, "bot_refresh_token": "xoxe-1-refresh"}
    assert found.data == {"team_name": "One", "n": 1} and found.name == "One"
    assert installed_places(db)[0].sealed is True


def test_without_a_key_tokens_are_plain_and_a_key_seals_them_later(db):
    Installations(db, SecretBox(None, setting="SLACK_TOKEN_KEY"), "slack").save(row())
    assert db.execute("SELECT bot_token FROM installations").fetchone()[0] == TOKEN
    assert installed_places(db, "slack")[0].sealed is False
    keyed = Installations(db, SecretBox(KEY, setting="SLACK_TOKEN_KEY"), "slack")
    assert keyed.latest(org=None, workspace="T1").tokens["bot_token"] == TOKEN  # plain rows still read
    assert keyed.reseal() == 1
    assert db.execute("SELECT bot_token FROM installations").fetchone()[0].startswith("enc1:")
    assert keyed.reseal() == 0
    assert keyed.latest(org=None, workspace="T1").tokens["bot_token"] == TOKEN


# named ids: a random key in a test's id differs between xdist workers, which must collect the same tests
@pytest.mark.parametrize("key", [None, Fernet.generate_key().decode()], ids=["no-key", "another-key"])
def test_sealed_tokens_without_their_key_fail_naming_the_setting(db, key):
    Installations(db, SecretBox(KEY, setting="SLACK_TOKEN_KEY"), "slack").save(row())
    with pytest.raises(ConfigError) as caught:
        Installations(db, SecretBox(key, setting="SLACK_TOKEN_KEY"), "slack").latest(org=None, workspace="T1")
    assert caught.value.setting == "SLACK_TOKEN_KEY"


def test_a_malformed_key_fails_naming_the_setting():
    with pytest.raises(ConfigError) as caught:
        SecretBox("not a fernet key", setting="SLACK_TOKEN_KEY")
    assert caught.value.setting == "SLACK_TOKEN_KEY"


def test_latest_per_workspace_installer_and_organisation(db):
    store = Installations(db, SecretBox(None, setting="K"), "slack")
    base = datetime(2025, 1, 1, tzinfo=UTC)
    store.save(row("T1", installer="U1", token="xoxb-a", at=base))
    store.save(row("T1", installer="U2", token="xoxb-b", at=base + timedelta(days=1)))
    store.save(row("T2", token="xoxb-c"))
    store.save(row("", org="E1", token="xoxb-org", org_wide=True, name="Org"))
    assert store.latest(org=None, workspace="T1").tokens["bot_token"] == "xoxb-b"
    assert store.latest(org=None, workspace="T1", installer="U1").tokens["bot_token"] == "xoxb-a"
    assert store.latest(org="E1", workspace="T1") is None  # T1 is not in organisation E1
    assert store.latest(org="E1", workspace="").tokens["bot_token"] == "xoxb-org"
    assert Installations(db, SecretBox(None, setting="K"), "discord").latest(org=None, workspace="T1") is None
    store.save(row("T1", installer="U1", token="xoxb-a2", at=base))  # the same installer again: replaced
    assert db.execute("SELECT count(*) FROM installations WHERE workspace = 'T1'").fetchone()[0] == 2
    places = {p.key: p for p in installed_places(db, "slack")}
    assert set(places) == {"slack:T1", "slack:T2", "slack:E1"}
    assert places["slack:T1"].installers == 2 and places["slack:E1"].org_wide


def test_clearing_tokens_keeps_the_rest_and_deletes_empty_rows(db):
    store = Installations(db, SecretBox(None, setting="K"), "slack")
    store.save(InstallationRow("slack", "", "T1", "U1", False, "One", {},
                               {"bot_token": "xoxb-a", "user_token": "xoxp-u1"}))
    assert store.clear_tokens(org=None, workspace="T1", names=["user_token", "user_refresh_token"],
                              installer="U1") == 1
    assert store.latest(org=None, workspace="T1").tokens == {"bot_token": "xoxb-a"}
    store.clear_tokens(org=None, workspace="T1", names=["bot_token", "bot_refresh_token"])
    assert store.latest(org=None, workspace="T1") is None
    store.save(row("T1"))
    assert store.delete(org=None, workspace="T1") == 1 and installed_places(db) == []


def test_oauth_states_are_consumed_once_and_expire(db):
    states = OAuthStates(db, "slack")
    states.issue("s1", 600)
    states.issue("old", -1)  # already past its expiry
    assert states.consume("s1") is True
    assert states.consume("s1") is False  # a replayed redirect
    assert states.consume("old") is False
    assert states.consume("never-issued") is False
    assert OAuthStates(db, "discord").consume("s1") is False
