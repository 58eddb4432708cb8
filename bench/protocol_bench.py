"""Microseconds per protocol operation on the switch: encode, decode, framing and crypto.

Run: .venv/bin/python -m bench.protocol_bench [--iterations N]

Encode and decode are timed per message type on the worked examples (protocol.examples), so
the messages are realistic in size. The cryptography figures come from
bench.crypto_timings (worst-case DUKPT counters).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

from bench.crypto_timings import crypto_timings
from protocol import examples
from protocol.framing import FrameDecoder, encode_frame
from protocol.messages import decode, encode


def per_call_us(iterations: int, call: Callable[[], object]) -> float:
    call()  # warm-up: first-call costs (imports, caches) are not what we measure
    start = time.perf_counter()
    for _ in range(iterations):
        call()
    return (time.perf_counter() - start) / iterations * 1e6


def codec_timings(iterations: int) -> list[tuple[str, int, float, float]]:
    """(MTI, size in bytes, encode µs, decode µs) for each worked example."""
    rows = []
    for example in examples.build():
        message, raw = example.message, example.raw
        rows.append(
            (
                message.MTI.value,
                len(raw),
                per_call_us(iterations, partial(encode, message)),
                per_call_us(iterations, partial(decode, raw)),
            )
        )
    return rows


def framing_timing(iterations: int) -> float:
    """µs per frame to split a stream of back-to-back example frames."""
    stream = b"".join(encode_frame(e.raw) for e in examples.build())
    count = len(examples.build())
    return per_call_us(iterations, lambda: FrameDecoder().feed(stream)) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    args = parser.parse_args()
    print(f"iterations per figure: {args.iterations}")
    print(f"{'message':>8} {'bytes':>6} {'encode µs':>10} {'decode µs':>10}")
    for mti, size, encode_us, decode_us in codec_timings(args.iterations):
        print(f"{mti:>8} {size:>6} {encode_us:>10.1f} {decode_us:>10.1f}")
    print(f"{'frame split µs/frame':>26}: {framing_timing(args.iterations):8.1f}")
    for name, value in crypto_timings(args.iterations).items():
        print(f"{name:>26}: {value:8.1f}")


if __name__ == "__main__":
    main()
