"""The container and the docs agree with the code: no Docker engine runs here, so the Dockerfile is linted
(hadolint in `make test`) and read."""

from __future__ import annotations

import re
from pathlib import Path

from imagine_bot.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()


def test_image_runs_the_bot_as_a_non_root_user_with_a_healthcheck():
    assert DOCKERFILE.count("\nFROM ") + DOCKERFILE.startswith("FROM ") >= 2, "multi-stage build"
    final_stage = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert re.search(r'^CMD \["imagine-bot", "run"\]$', final_stage, re.M)
    user = re.findall(r"^USER (\S+)$", final_stage, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in final_stage and "/healthz" in final_stage
    assert "gcc" not in final_stage and "build-essential" not in final_stage
    assert (ROOT / ".dockerignore").read_text().count(".env") >= 1  # secrets never baked in


def test_image_settings_are_real_settings_and_documented():
    fields = set(Settings.model_fields)
    for name in re.findall(r"^\s+([A-Z_]+)=", DOCKERFILE, re.M):
        if name in ("PATH", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"):
            continue
        assert name in fields, name
    assert "imagine-bot run" in README and "docker build" in README


def test_every_setting_is_in_env_example_and_readme():
    for name in Settings.model_fields:
        assert re.search(rf"^{name}=", ENV_EXAMPLE, re.M), f"{name} missing from .env.example"
        assert f"`{name}`" in README, f"{name} missing from the README's configuration table"


def test_env_example_holds_no_secrets():
    for line in ENV_EXAMPLE.splitlines():
        if re.match(r"^(MODKIE_API_KEY|MODKIE_WEBHOOK_SECRET|SLACK_BOT_TOKEN|SLACK_APP_TOKEN|SLACK_SIGNING_SECRET|"
                    r"DISCORD_TOKEN)=", line):
            assert line.endswith("="), line
