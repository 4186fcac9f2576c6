"""The Slack app manifests shipped with the bot: ``manifest.yml`` (one workspace) and
``manifest-distributed.yml`` (many workspaces through "Add to Slack"), read as package data."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

SINGLE = "manifest.yml"
DISTRIBUTED = "manifest-distributed.yml"


def read(name: str = SINGLE) -> dict[str, Any]:
    text = resources.files("imagine_bot.bots.slack").joinpath(name).read_text(encoding="utf-8")
    manifest: dict[str, Any] = yaml.safe_load(text)
    return manifest


def bot_scopes(name: str = SINGLE) -> list[str]:
    """The bot scopes a manifest asks for."""
    return list(read(name)["oauth_config"]["scopes"]["bot"])
