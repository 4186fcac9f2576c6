"""Prometheus metrics, served at ``/metrics`` (see docs/operations.md for each one and example alerts).

Each core has its own ``CollectorRegistry`` (never prometheus-client's global one), so several cores in
one process (tests) never share counters. The core feeds it at its seams: the orchestrator's job
outcomes, the gateway client's requests and balance reads, and the front ends' acknowledgements.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

#: accepted -> delivered: seconds to minutes
JOB_BUCKETS = (1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, float("inf"))
#: gateway done -> delivered, and acknowledgements: milliseconds to seconds
FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))


class Metrics:
    """The bot's metrics. ``render()`` gives the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter("imagine_jobs", "Jobs finished, by platform and outcome (delivered or failed)",
                            ["platform", "outcome"], registry=r)
        self.job_seconds = Histogram("imagine_job_seconds", "Seconds from a job accepted to its image delivered",
                                     buckets=JOB_BUCKETS, registry=r)
        self.delivery_overhead = Histogram(
            "imagine_delivery_overhead_seconds",
            "Seconds from the gateway reporting success to the image delivered (download + posting)",
            buckets=FAST_BUCKETS, registry=r)
        self.ack_seconds = Histogram("imagine_ack_seconds", "Seconds to acknowledge a chat command, by platform",
                                     ["platform"], buckets=FAST_BUCKETS, registry=r)
        self._acks: dict[str, Histogram] = {}
        self.gateway_requests = Counter(
            "imagine_gateway_requests",
            "Requests to the image gateway, by endpoint and answer code (HTTP status, or the envelope code "
            "of an HTTP 200; 'transport' when no answer came)", ["endpoint", "code"], registry=r)
        self.credits_spent = Counter("imagine_credits_spent", "Credits captured for delivered images, by scope "
                                     "(slack:TEAM, discord:GUILD, ...)", ["scope"], registry=r)
        self.jobs_in_flight = Gauge("imagine_jobs_in_flight", "Jobs this process is working on", registry=r)
        self.queue_depth = Gauge("imagine_queue_depth", "Jobs waiting for a gateway slot or the rate limit",
                                 registry=r)
        self.gateway_balance = Gauge("imagine_gateway_balance_credits",
                                     "The gateway account's balance at the last read (NaN before the first)",
                                     registry=r)
        self.gateway_balance.set(float("nan"))

    # ------------------------------------------------------------------ seams
    def watch(self, in_flight: Callable[[], float], queued: Callable[[], float]) -> None:
        """Gauges read when scraped (the orchestrator's counts)."""
        self.jobs_in_flight.set_function(in_flight)
        self.queue_depth.set_function(queued)

    def watch_billed(self, read: Callable[[], float]) -> None:
        """``imagine_billed_not_delivered_credits_total``, read when scraped (from the job rows, so every
        process sharing the database reports the same figure, and it survives restarts)."""
        self.registry.register(_BilledNotDelivered(read))

    def gateway_request(self, endpoint: str, code: str) -> None:
        self.gateway_requests.labels(endpoint=endpoint, code=code).inc()

    def balance(self, credits: int) -> None:
        self.gateway_balance.set(credits)

    def last_balance(self) -> float:
        """The gateway balance last read (NaN before the first read)."""
        value = self.registry.get_sample_value("imagine_gateway_balance_credits")
        return float("nan") if value is None else value

    def ack(self, platform: str, seconds: float) -> None:
        child = self._acks.get(platform)  # looked up once a platform: this runs for every command
        if child is None:
            child = self._acks[platform] = self.ack_seconds.labels(platform=platform)
        child.observe(max(0.0, seconds))

    def delivered(self, platform: str, scope: str, cost: int, job_s: float, overhead_s: float | None) -> None:
        self.jobs.labels(platform=platform, outcome="delivered").inc()
        self.job_seconds.observe(job_s)
        if overhead_s is not None:
            self.delivery_overhead.observe(overhead_s)
        self.credits_spent.labels(scope=scope).inc(cost)

    def failed(self, platform: str) -> None:
        self.jobs.labels(platform=platform, outcome="failed").inc()

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _BilledNotDelivered(Collector):
    NAME = "imagine_billed_not_delivered_credits"
    HELP = ("Credits the gateway charged for jobs it reported successful that then failed (never delivered; "
            "the user was refunded)")

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.NAME, self.HELP)]

    def collect(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.NAME, self.HELP, value=self.read())]
