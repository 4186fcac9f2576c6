"""Logging set-up with secret redaction: whatever a library logs, the API key and tokens never show."""

from __future__ import annotations

import logging
from collections.abc import Iterable

#: shorter values are not redacted: no real key or token is that short, and replacing a word such as the
#: sandbox's placeholder key ``sandbox`` wherever it appears garbles messages ("***: generation failed")
MIN_SECRET_CHARS = 8


def redactable(secret: str | None) -> bool:
    """Whether ``secret`` is hidden from logs and messages: a real key or token, not a common word."""
    return bool(secret) and len(secret or "") >= MIN_SECRET_CHARS


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if redactable(s)]

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            cleaned = self._clean(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
        return True


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "aiohttp.access", "discord.gateway", "slack_bolt", "slack_sdk"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
