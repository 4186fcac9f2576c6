"""The container and the docs agree with the code: the Dockerfile is linted (hadolint in `make test`) and
read here; `make container-test` builds and runs the image."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from imagine_bot.core.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
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


def test_every_setting_is_in_env_example_and_the_configuration_guide():
    for name in Settings.model_fields:
        # a setting the image sets itself is documented commented out, so `--env-file .env` keeps the image's
        assert re.search(rf"^(# )?{name}=", ENV_EXAMPLE, re.M), f"{name} missing from .env.example"
        assert f"`{name}`" in CONFIGURATION, f"{name} missing from docs/configuration.md's table"


def test_env_example_holds_no_secrets():
    for line in ENV_EXAMPLE.splitlines():
        if re.match(r"^(MODKIE_API_KEY|MODKIE_WEBHOOK_SECRET|SLACK_BOT_TOKEN|SLACK_APP_TOKEN|SLACK_SIGNING_SECRET|"
                    r"SLACK_CLIENT_SECRET|SLACK_TOKEN_KEY|DISCORD_TOKEN)=", line):
            assert line.endswith("="), line


def test_dockerignore_patterns_match_at_any_depth():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    for name in ("__pycache__", "*.db", "*.db-*", ".env", ".pytest_cache"):
        assert f"**/{name}" in patterns, f"**/{name}: Docker matches a bare {name} only at the top level"


def test_image_is_reproducible_base_pinned_and_dependencies_constrained():
    bases = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:\w+)?", b) for b in bases), bases
    assert len(set(bases)) == 1, "build and run on the same base"
    assert re.search(r"^COPY .*constraints\.txt", DOCKERFILE, re.M)
    assert re.search(r"pip install [^\n]*-c constraints\.txt", DOCKERFILE)


def constraints(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "constraints.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_every_runtime_dependency_is_pinned_for_the_image():
    result = constraints("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    pins = (ROOT / "constraints.txt").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the image installs the postgres extra too (one image for SQLite and PostgreSQL)
    assert re.search(r"pip install [^\n]*-c constraints\.txt '\.\[postgres\]'", DOCKERFILE)
    for raw in [*project["dependencies"], *project["optional-dependencies"]["postgres"]]:
        name = re.split(r"[<>=!~\[; ]", raw, maxsplit=1)[0].lower().replace(".", "-").replace("_", "-")
        assert re.search(rf"^{re.escape(name)}==\S+$", pins, re.M), f"{name} is not pinned in constraints.txt"


def test_a_dependency_added_to_pyproject_is_reported_then_pinned(tmp_path):
    """Someone adds a dependency: --check names it and the fix; `make test`'s run of the script pins it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [*project["dependencies"], "pytest>=8"]  # installed here, so it can be pinned
    (tmp_path / "pyproject.toml").write_text("[project]\ndependencies = [" + ", ".join(f'"{d}"' for d in deps)
                                             + "]\n")
    (tmp_path / "constraints.txt").write_text((ROOT / "constraints.txt").read_text())
    paths = ("--pyproject", str(tmp_path / "pyproject.toml"), "--constraints", str(tmp_path / "constraints.txt"))
    checked = constraints("--check", *paths)
    assert checked.returncode == 1 and "pytest==" in checked.stdout and "make test" in checked.stdout
    assert constraints(*paths).returncode == 0
    assert re.search(r"^pytest==\S+$", (tmp_path / "constraints.txt").read_text(), re.M)
    assert constraints("--check", *paths).returncode == 0


def test_compose_runs_two_replicas_on_one_postgresql_behind_one_port():
    """compose.yaml: PostgreSQL, the sandbox gateway, two bot replicas (each its own data volume, each half
    the key's rates, the same database) and one balancer whose upstreams are exactly the replicas' ports."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "sandbox", "bot-1", "bot-2", "balancer"} <= set(services)
    bots = [services["bot-1"], services["bot-2"]]
    ports = set()
    for bot in bots:
        env = bot["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://imagine:${POSTGRES_PASSWORD}@postgres:5432/")
        assert bot["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert load_settings(_env_file=None, **{k: v for k, v in env.items() if k != "DATABASE_URL"})  # valid
        assert int(env["CREATE_RATE_PER_10S"]) * len(bots) <= 18 and float(env["POLL_RATE_PER_S"]) * len(bots) <= 8
        assert bot["network_mode"] == "service:sandbox"
        ports.add(int(env["HTTP_PORT"]))
    assert len(ports) == 2
    assert len({bot["volumes"][0].split(":")[0] for bot in bots}) == 2  # nothing on disk is shared
    assert {b["environment"]["DISCORD_SHARD_IDS"] for b in bots} == {"0", "1"}
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert {int(p) for p in re.findall(r"server sandbox:(\d+)", nginx)} == ports
    assert services["balancer"]["ports"] == ["3000:8080"] and "listen 8080;" in nginx
    assert "--host" in services["sandbox"]["command"] and "8787" in services["sandbox"]["command"]
