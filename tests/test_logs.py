"""The log filter: whatever a library logs, a configured secret is replaced by ***."""

from __future__ import annotations

import logging

import pytest

from imagine_bot.core.ops.logs import RedactSecrets, redactable


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


def test_a_common_word_is_not_a_secret_to_redact():
    """The sandbox's placeholder key is the word `sandbox`: hiding it wherever it appears turned every
    sandbox failure into "***: generation failed". Real keys and tokens are long; short values stay."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("test.redact.words")
    handler = Collect()
    handler.addFilter(RedactSecrets(["sandbox", "mk-live-0123456789abcdef"]))
    logger.addHandler(handler)
    try:
        logger.warning("sandbox: generation failed on request (key mk-live-0123456789abcdef)")
    finally:
        logger.removeHandler(handler)
    assert records == ["sandbox: generation failed on request (key ***)"]
    assert not redactable("sandbox") and not redactable("") and redactable("mk-live-0123456789abcdef")


@pytest.mark.slow
def test_a_sandbox_failure_reads_as_the_sandbox_wrote_it(tmp_path):
    """What a user of the sandbox sees when a job fails: the gateway's words, not asterisks."""
    from .test_cli import cli

    result = cli("--sandbox", "imagine", "a broken dream sandbox:fail", cwd=tmp_path)
    assert result.returncode == 1
    assert "[500] sandbox: generation failed on request" in result.stderr, result.stderr  # the log line
    job_id = result.stdout.split("Got it")[0].split()[-1]
    shown = cli("jobs", "show", job_id, cwd=tmp_path)  # what the dashboard and `jobs show` keep of it
    assert "sandbox: generation failed on request" in shown.stdout, shown.stdout
    assert "***" not in result.stdout + result.stderr + shown.stdout
