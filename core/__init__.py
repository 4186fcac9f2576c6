"""imagine-bot core: gateway client, command parsing, credit ledger and job orchestrator.

Nothing in ``core`` knows about Slack or Discord; front ends live in ``bots/``.
"""

__version__ = "0.1.0"
