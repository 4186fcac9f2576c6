"""Benchmarks: measured figures for imagine-bot, printed as a table and saved to ``results/latest.json``.

``make bench`` (or ``python -m benchmarks``) runs them all; ``python -m benchmarks ack ledger`` picks some;
``--quick`` is a fast smoke run with smaller counts. They print figures and never assert: a goal that is
missed shows as ``no`` in the table. See ``docs/benchmarks.md`` for what each figure measures and how.

Every benchmark runs in its own child process (so memory peaks and event loops never mix), talks only
to 127.0.0.1, is bounded in count and in time, and shuts down what it started. The sandbox gateway and
the fake Slack Web API run in helper processes of their own, so their CPU and memory are not counted in
the bot's figures.
"""

#: benchmark name -> module (each module has ``run(quick: bool) -> dict``)
BENCHMARKS = {
    "ack": "benchmarks.ack",
    "claim": "benchmarks.claim",
    "commit": "benchmarks.commit",
    "delivery": "benchmarks.delivery",
    "deploy": "benchmarks.deploy",
    "headofline": "benchmarks.headofline",
    "httpclient": "benchmarks.httpclient",
    "inflight": "benchmarks.inflight",
    "ledger": "benchmarks.ledger",
    "naive": "benchmarks.naive",
}
