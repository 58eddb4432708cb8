"""Microseconds the metrics add to one request, and what caching the label children saves.

Run: .venv/bin/python -m bench.metrics_bench [--iterations N]

Per request the processor counts the message and observes its latency (`count_message`,
`observe_latency`), and the pool wrapper moves the waiting gauge up and down; the first line
is what the same two updates cost through `.labels()` each time, for comparison. A JSON log
line is timed too, for the events logged per request at debug level.
"""

from __future__ import annotations

import argparse
import logging

from bench.protocol_bench import per_call_us
from switch import logs, metrics


def _labels_each_time() -> None:
    metrics.MESSAGES.labels("0100", "009100", "00").inc()
    metrics.PHASE_LATENCY.labels("request").observe(0.003)


def _cached() -> None:
    metrics.count_message("0100", "009100", "00")
    metrics.observe_latency("request", 0.003)


def _waiting() -> None:
    metrics.DB_POOL_WAITING.inc()
    metrics.DB_POOL_WAITING.dec()


def _json_line(formatter: logging.Formatter, record: logging.LogRecord) -> None:
    formatter.format(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    n = parser.parse_args().iterations
    record = logging.LogRecord("switch.processor", logging.DEBUG, __file__, 1,
                               "request_answered", None, None)
    record.__dict__.update(mti="0100", processing_code="009100", response_code="00",
                           stan="000042", duration_ms=3.2)
    formatter = logs.JsonFormatter()
    for name, call in (("message + latency via .labels() each time", _labels_each_time),
                       ("message + latency, cached children (as served)", _cached),
                       ("pool waiting gauge up and down", _waiting),
                       ("one JSON log line", lambda: _json_line(formatter, record))):
        print(f"{per_call_us(n, call):8.2f} us  {name}")


if __name__ == "__main__":
    main()
