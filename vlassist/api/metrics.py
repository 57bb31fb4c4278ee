"""Prometheus metrics of the API server (`GET /metrics`): queue, running answers, tokens, latencies, errors."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from vlassist.conversation import Stats
from vlassist.service.answering import AnswerService

# Seconds to the first answer token: from a fast GPU prefill to a long CPU one.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Seconds per answer token after the first: 1000 tokens/s down to 1 token/s.
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0)

# The `_created` series (one timestamp per counter) only double what a scraper sees; leave them out.
disable_created_metrics()


class ApiMetrics:
    """The server's metrics in a registry of its own (several apps in one process keep separate counts)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: AnswerService):
        self.registry = CollectorRegistry()
        queue = Gauge("vlassist_queue_length", "Answers waiting to start", registry=self.registry)
        queue.set_function(lambda: service.queued)
        running = Gauge("vlassist_running_answers", "Answers being generated now", registry=self.registry)
        running.set_function(lambda: int(service.running))
        self.requests = Counter("vlassist_requests", "Finished chat completions by outcome", ["outcome"],
                                registry=self.registry)
        self.prompt_tokens = Counter("vlassist_prompt_tokens", "Prompt tokens of answered requests (text and images)",
                                     registry=self.registry)
        self.completion_tokens = Counter("vlassist_completion_tokens", "Answer tokens generated",
                                         registry=self.registry)
        self.ttft = Histogram("vlassist_time_to_first_token_seconds", "From an answer's start to its first token",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.tpot = Histogram("vlassist_time_per_output_token_seconds", "Seconds per answer token after the first",
                              buckets=TPOT_BUCKETS, registry=self.registry)
        self.errors = Counter("vlassist_errors", "Error responses by HTTP status and error code",
                              ["status", "code"], registry=self.registry)

    def answered(self, stats: Stats, outcome: str) -> None:
        """Count one finished chat completion with its stats."""
        self.requests.labels(outcome=outcome).inc()
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.completion_tokens.inc(stats.new_tokens)
        if stats.new_tokens:
            self.ttft.observe(stats.ttft_s)
        if stats.new_tokens > 1 and stats.tokens_per_s > 0:
            self.tpot.observe(1.0 / stats.tokens_per_s)

    def error(self, status: int, code: str | None) -> None:
        """Count one error response."""
        self.errors.labels(status=str(status), code=code or "none").inc()

    def render(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
