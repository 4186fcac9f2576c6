"""``DATABASE_URL``: where the PostgreSQL server is, and a password that is never printed.

Read by the settings (no database driver needed to check it) and by ``core.storage.postgres``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A ``postgresql://user:password@host:port/dbname`` URL. ``str()`` and ``repr()`` hide the password."""

    url: str

    @classmethod
    def parse(cls, url: str) -> DatabaseUrl:
        """Check the shape (ValueError, in words without the password, if wrong)."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must start with postgresql:// (postgresql://user:password@host:5432/dbname)")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError("has a port that is not a number") from None
        if not parts.hostname and "host=" not in parts.query:
            raise ValueError("names no host (postgresql://user:password@host:5432/dbname)")
        if not parts.path.strip("/"):
            raise ValueError("names no database (postgresql://user:password@host:5432/dbname)")
        return cls(url.strip())

    @property
    def host(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("host", "?")
        return f"{host}:{parts.port or 5432}"

    @property
    def dbname(self) -> str:
        return unquote(urlsplit(self.url).path.lstrip("/"))

    @property
    def user(self) -> str | None:
        return unquote(urlsplit(self.url).username or "") or None

    @property
    def password(self) -> str | None:
        raw = urlsplit(self.url).password
        return unquote(raw) if raw else None

    @property
    def redacted(self) -> str:
        """The URL with ``***`` for the password: what logs, errors and ``doctor`` show."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()

    def scrub(self, text: str) -> str:
        """``text`` with the password taken out, wherever it appears (an error message)."""
        for secret in {s for s in (self.password, urlsplit(self.url).password) if s}:
            text = text.replace(secret, "***")
        return text

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"DatabaseUrl({self.redacted!r})"
