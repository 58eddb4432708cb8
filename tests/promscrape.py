"""Reading a live /metrics endpoint the way Prometheus does: over HTTP, parsed with
prometheus_client's text-format parser."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        body: bytes = response.read()
    return body.decode()


async def scrape(port: int, prefix: str = "loyalty_") -> Samples:
    """Every sample whose name starts with `prefix`, keyed by name and sorted labels."""
    body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples
