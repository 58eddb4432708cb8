"""Prometheus metrics of the switch. Names use base units and `_total`/`_seconds`; labels
never carry a PAN, STAN, TID or RRN (bounded cardinality, and no card data leaves the
process). Each metric is defined once here and imported where it moves."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS_OPEN = Gauge("loyalty_connections_open", "Open terminal connections")
CONNECTIONS_REJECTED = Counter(
    "loyalty_connections_rejected_total", "Connections closed at accept because of a limit",
    ["reason"])  # total | per_ip | shutdown
CONNECTIONS_CLOSED = Counter(
    "loyalty_connections_closed_total", "Connections closed by the switch", ["reason"])
FRAMES_REJECTED = Counter(
    "loyalty_frames_rejected_total", "Frames refused before decoding", ["reason"])
IN_FLIGHT = Gauge("loyalty_requests_in_flight", "Requests being processed")
MESSAGES = Counter(
    "loyalty_messages_total", "Requests answered", ["mti", "processing_code", "response_code"])
SECURITY_FAILURES = Counter(
    "loyalty_security_failures_total", "Requests refused by the security chain", ["kind"])
PHASE_LATENCY = Histogram(
    "loyalty_request_duration_seconds", "Time from decoded request to response, per phase",
    ["phase"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
HOLDS_EXPIRED = Counter("loyalty_holds_expired_total", "Holds expired by the sweeper")
DB_ERRORS = Counter("loyalty_db_errors_total", "Requests answered 91 for database trouble")
