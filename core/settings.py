"""Settings: one typed object read from the environment and ``.env``.

Every name here is documented in ``.env.example`` and the README. A missing or wrong setting fails at
start with one line naming the setting (``ConfigError``), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from imagine_bot.core.errors import ConfigError
from imagine_bot.core.media.netaddr import is_loopback_host
from imagine_bot.core.storage.url import DatabaseUrl

SANDBOX = "sandbox"
#: read after the environment, from the current folder
ENV_FILE = ".env"
#: the share of DRAIN_S one whole createTask call may take, so that a drain never ends in the middle of one
#: (the rest is for saving its answer and the last status messages)
CREATE_TASK_SHARE_OF_DRAIN = 0.75

CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=ENV_FILE, env_file_encoding="utf-8", extra="ignore", case_sensitive=True
    )

    # --- the image gateway
    MODKIE_API_KEY: SecretStr | None = None
    MODKIE_BASE_URL: str = "https://modkie.com"
    MODKIE_MODEL: str = "seedream/4.5-text-to-image"
    MODKIE_ASPECT_RATIOS: CsvList = Field(default_factory=list)
    MODKIE_WEBHOOK_SECRET: SecretStr | None = None
    MODKIE_NSFW_CHECKER: bool = True
    GATEWAY_BALANCE_CHECK_S: float = Field(default=300.0, gt=0)
    #: operators get one DM a day once the credits billed for images never delivered reach this (0: never)
    UNDELIVERED_ALERT_CREDITS: int = Field(default=90, ge=0)
    MAX_DOWNLOAD_MB: float = Field(default=25, gt=0)
    MODKIE_TIMEOUT_S: float = Field(default=15.0, gt=0)
    #: multiplies the embedded sandbox's stage delays (0.4 s waiting, 0.4 s queuing, 2 s generating): below 1
    #: a sandbox job finishes sooner (the test suite's command-line tests use 0.05)
    SANDBOX_DELAY_SCALE: float = Field(default=1.0, gt=0, le=100)

    # --- storage: everything the bot keeps sits in IMAGINE_DATA_DIR (./data in a checkout; the image sets /data);
    # a relative IMAGINE_DB_PATH is taken under it, and the spool, references and sandbox state sit beside it
    IMAGINE_DATA_DIR: Path = Path("data")
    IMAGINE_DB_PATH: Path = Path("imagine-bot.db")
    #: how long one write waits for another process's write lock before it counts as busy (and is retried)
    DB_BUSY_TIMEOUT_S: float = Field(default=5.0, gt=0)
    #: PostgreSQL instead of the SQLite file (postgresql://user:password@host:5432/dbname): several hosts,
    #: one ledger. Each host keeps its own IMAGINE_DATA_DIR (the images waiting for delivery)
    DATABASE_URL: SecretStr | None = None
    #: connections each process keeps to PostgreSQL at most
    DATABASE_POOL_SIZE: int = Field(default=8, ge=1, le=100)

    # --- the one web server (callbacks, /healthz, Slack HTTP mode)
    HTTP_HOST: str = "0.0.0.0"
    HTTP_PORT: int = Field(default=3000, ge=0, le=65535)
    PUBLIC_URL: str | None = None
    METRICS_TOKEN: SecretStr | None = None
    #: days the bot keeps reference images and its results (the Vary and Remix buttons work that long)
    REFS_KEEP_DAYS: float = Field(default=7.0, gt=0)
    #: days a delivered job's thumbnail is kept for the dashboard's gallery (0: keep none)
    THUMBNAIL_KEEP_DAYS: int = Field(default=30, ge=0)

    # --- credits and limits (an amount of credits is at most 10^9, as for grants: ledger.MAX_CREDITS_CHANGE)
    CREDITS_ALLOWANCE: int = Field(default=180, ge=0, le=1_000_000_000)
    CREDITS_PERIOD: Literal["day", "week", "month", "never"] = "month"
    MAX_ACTIVE_JOBS_PER_USER: int = Field(default=2, ge=1)
    MAX_ACTIVE_JOBS: int = Field(default=32, ge=1)
    CREATE_RATE_PER_10S: int = Field(default=18, ge=1)
    POLL_INTERVAL_S: float = Field(default=2.0, gt=0)
    POLL_MAX_INTERVAL_S: float = Field(default=15.0, gt=0)
    POLL_RATE_PER_S: float = Field(default=8.0, gt=0)
    JOB_TIMEOUT_S: float = Field(default=600.0, gt=0)
    DELIVERY_RETRY_S: float = Field(default=300.0, ge=0)
    # --- several processes, deploys
    DRAIN_S: float = Field(default=20.0, ge=0)
    JOB_LEASE_S: float = Field(default=30.0, gt=0)

    # --- budgets above the user (core/credits/budgets.py)
    DEFAULT_SCOPE_BUDGET: int | None = Field(default=None, ge=0, le=1_000_000_000)
    SCOPE_BUDGET_PERIOD: Literal["day", "week", "month", "never"] = "month"
    SPEND_CAP: int | None = Field(default=None, ge=0, le=1_000_000_000)
    SPEND_CAP_PERIOD: Literal["day", "week", "month"] = "month"

    # --- people and moderation
    ADMINS: CsvList = Field(default_factory=list)
    BANNED_WORDS: CsvList = Field(default_factory=list)
    #: hours an image waits for a reviewer's decision in a channel with approvals before it expires
    APPROVAL_EXPIRE_H: float = Field(default=72.0, gt=0)

    # --- Slack
    SLACK_BOT_TOKEN: SecretStr | None = None
    SLACK_APP_TOKEN: SecretStr | None = None
    SLACK_SIGNING_SECRET: SecretStr | None = None
    SLACK_API_URL: str = "https://slack.com/api/"
    SLACK_RESULT_IN_THREAD: bool = False
    SLACK_ALLOWED_TEAMS: CsvList = Field(default_factory=list)
    #: distributed mode ("Add to Slack" in many workspaces): the app's client id and secret, no bot token
    SLACK_CLIENT_ID: str | None = None
    SLACK_CLIENT_SECRET: SecretStr | None = None
    #: the key that seals the installed workspaces' tokens in the database (a Fernet key)
    SLACK_TOKEN_KEY: SecretStr | None = None

    # --- Discord
    DISCORD_TOKEN: SecretStr | None = None
    DISCORD_API_BASE: str = "https://discord.com/api/v10"
    DISCORD_GATEWAY_URL: str | None = None
    DISCORD_GUILD_IDS: CsvList = Field(default_factory=list)
    DISCORD_ALLOW_DMS: bool = False
    #: None: as many shards as Discord recommends, all in this process (``GET /gateway/bot``)
    DISCORD_SHARD_COUNT: int | None = Field(default=None, ge=1)
    #: the shards this process runs (the others run elsewhere); empty: all of DISCORD_SHARD_COUNT
    DISCORD_SHARD_IDS: CsvList = Field(default_factory=list)
    DISCORD_ALLOWED_GUILDS: CsvList = Field(default_factory=list)
    DISCORD_NSFW_CHANNELS_UNFILTERED: bool = False

    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: object) -> object:
        """``NAME=`` in .env means "not set": the default applies."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and v.strip() == "")}
        return data

    @model_validator(mode="after")
    def _db_under_data_dir(self) -> Settings:
        """``IMAGINE_DB_PATH=imagine-bot.db`` means ``$IMAGINE_DATA_DIR/imagine-bot.db``: a copied ``.env``
        never moves the database out of the container's ``/data`` volume."""
        if str(self.IMAGINE_DB_PATH) != ":memory:":
            if not self.IMAGINE_DB_PATH.is_absolute():
                self.IMAGINE_DB_PATH = self.IMAGINE_DATA_DIR / self.IMAGINE_DB_PATH
            # resolved once, when read: the spool beside it and every file path a job row stores then mean
            # the same place whatever the working directory of a later process or thread
            self.IMAGINE_DB_PATH = self.IMAGINE_DB_PATH.expanduser().resolve()
        return self

    @field_validator("DATABASE_URL")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            DatabaseUrl.parse(value.get_secret_value())  # its words never include the password
        return value

    @field_validator("ADMINS", "BANNED_WORDS", "MODKIE_ASPECT_RATIOS", "DISCORD_GUILD_IDS", "DISCORD_SHARD_IDS",
                     "DISCORD_ALLOWED_GUILDS", "SLACK_ALLOWED_TEAMS", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("ADMINS")
    @classmethod
    def _check_admins(cls, value: list[str]) -> list[str]:
        for admin in value:
            parts = admin.split(":")
            ok = (parts[0] == "slack" and len(parts) == 3 and all(parts)) or (
                parts[0] in ("discord", "terminal") and len(parts) == 2 and parts[1]
            )
            if not ok:
                raise ValueError(f"{admin!r} is not slack:TEAM:USER or discord:USER")
        return value

    @field_validator("DISCORD_SHARD_IDS")
    @classmethod
    def _check_shard_ids(cls, value: list[str], info: ValidationInfo) -> list[str]:
        count = info.data.get("DISCORD_SHARD_COUNT")
        if not value:
            return value
        if count is None:
            raise ValueError("needs DISCORD_SHARD_COUNT too (the number of shards over all processes)")
        for shard in value:
            if not shard.isdigit():
                raise ValueError(f"{shard!r} is not a shard number (0, 1, ...)")
            if int(shard) >= count:
                raise ValueError(f"shard {shard} is not below DISCORD_SHARD_COUNT ({count}); shards count from 0")
        return value

    @field_validator("MODKIE_BASE_URL", "SLACK_API_URL", "DISCORD_API_BASE")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value != SANDBOX and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("MODKIE_BASE_URL")
    @classmethod
    def _no_key_in_clear(cls, value: str) -> str:
        """The API key travels in every request: plain http only to this machine (the sandbox, tests)."""
        if value.startswith("http://") and not is_loopback_host(urlsplit(value).hostname or ""):
            raise ValueError("plain http:// would send the API key in clear: use https://, or http:// only "
                             "to 127.0.0.1 or localhost")
        return value

    @field_validator("PUBLIC_URL")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    # --- derived
    @property
    def sandbox(self) -> bool:
        return self.MODKIE_BASE_URL == SANDBOX

    @property
    def gateway_usable(self) -> bool:
        """Whether the gateway can be asked anything: the embedded sandbox, or a key for the real one."""
        return self.sandbox or bool(self.MODKIE_API_KEY and self.MODKIE_API_KEY.get_secret_value())

    @property
    def gateway_name(self) -> str:
        """The gateway in use, as people should read it: its address, or the embedded sandbox."""
        return "the embedded sandbox gateway" if self.sandbox else self.MODKIE_BASE_URL

    @property
    def discord_shard_ids(self) -> list[int] | None:
        return [int(s) for s in self.DISCORD_SHARD_IDS] or None

    @property
    def callback_url(self) -> str | None:
        return f"{self.PUBLIC_URL}/callbacks/modkie" if self.PUBLIC_URL else None

    @property
    def create_task_timeout_s(self) -> float:
        """The longest one whole createTask call may take (connection retries and every phase of the request
        included): MODKIE_TIMEOUT_S, but below DRAIN_S, so a drain always outlasts a createTask in flight."""
        if self.DRAIN_S <= 0:  # no drain to wait for it
            return self.MODKIE_TIMEOUT_S
        return min(self.MODKIE_TIMEOUT_S, CREATE_TASK_SHARE_OF_DRAIN * self.DRAIN_S)

    @property
    def max_download_bytes(self) -> int:
        return int(self.MAX_DOWNLOAD_MB * 1024 * 1024)

    @property
    def refs_dir(self) -> Path:
        """Where reference images served at ``/refs/`` are kept (beside the database)."""
        return self.IMAGINE_DB_PATH.parent / (self.IMAGINE_DB_PATH.stem + "-refs")

    @property
    def web_url(self) -> str:
        """Where people reach the web server: ``PUBLIC_URL``, else this machine's ``HTTP_PORT``."""
        if self.PUBLIC_URL:
            return self.PUBLIC_URL
        host = "127.0.0.1" if self.HTTP_HOST in ("0.0.0.0", "", "::") else self.HTTP_HOST
        return f"http://{host}:{self.HTTP_PORT}"

    @property
    def spool_dir(self) -> Path:
        """Where downloaded images wait for delivery (beside the database), as an absolute path: job rows
        store file paths, and another process (or this one, restarted elsewhere) must find them."""
        return self.IMAGINE_DB_PATH.parent / (self.IMAGINE_DB_PATH.stem + "-files")

    @property
    def sandbox_state_path(self) -> Path | None:
        """Where the embedded sandbox keeps its tasks (beside the database), so a restart resumes them."""
        if str(self.IMAGINE_DB_PATH) == ":memory:":
            return None
        return self.IMAGINE_DB_PATH.parent / (self.IMAGINE_DB_PATH.stem + "-sandbox.json")

    @property
    def database_url(self) -> DatabaseUrl | None:
        """``DATABASE_URL`` (None: SQLite at ``IMAGINE_DB_PATH``); its ``str()`` hides the password."""
        return None if self.DATABASE_URL is None else DatabaseUrl.parse(self.DATABASE_URL.get_secret_value())

    @property
    def database_label(self) -> str:
        """Where the data is, for people: the SQLite file, or the PostgreSQL URL without its password."""
        url = self.database_url
        return str(self.IMAGINE_DB_PATH) if url is None else url.redacted

    def secrets(self) -> list[str]:
        """Every secret value, for log redaction."""
        values = [self.MODKIE_API_KEY, self.MODKIE_WEBHOOK_SECRET, self.SLACK_BOT_TOKEN, self.SLACK_APP_TOKEN,
                  self.SLACK_SIGNING_SECRET, self.SLACK_CLIENT_SECRET, self.SLACK_TOKEN_KEY, self.DISCORD_TOKEN,
                  self.METRICS_TOKEN]
        found = [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]
        url = self.database_url
        if url is not None and url.password:
            found.append(url.password)
        return found


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning any validation problem into one ``ConfigError`` naming the setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        msg = err.get("msg", "invalid value")
        raise ConfigError(name, msg) from None
