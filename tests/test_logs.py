"""The log filter: whatever a library logs, a configured secret is replaced by ***."""

from __future__ import annotations

import logging

from imagine_bot.core.ops.logs import RedactSecrets


def test_secrets_are_redacted_from_messages_args_and_tracebacks():
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("test.redact")
    handler = Collect()
    handler.addFilter(RedactSecrets(["xoxb-very-secret", "mk-key-123"]))
    logger.addHandler(handler)
    try:
        logger.warning("token %s in args", "xoxb-very-secret")
        logger.warning("key mk-key-123 in the message")
        try:
            raise RuntimeError("failed with mk-key-123")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(records)
    assert "xoxb-very-secret" not in text and "mk-key-123" not in text
    assert text.count("***") >= 3
