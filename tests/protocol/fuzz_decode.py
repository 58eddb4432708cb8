"""Fuzz the decoders: only `DecodeError` may leave `decode`, only `FramingError` `FrameDecoder`.

Inputs are arbitrary bytes and mutations (bit flips, byte overwrites, insertions, deletions,
truncations, splices) of valid encoded messages. When `decode` accepts an input, the message
must survive encode/decode unchanged. The test suite runs a bounded number of examples
(`tests/protocol/test_fuzz.py`); for a long run:

    python -m tests.protocol.fuzz_decode --examples 1000000
    FUZZ_EXAMPLES=1000000 pytest tests/protocol/test_fuzz.py
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import DecodeError, FramingError
from protocol.framing import FrameDecoder
from protocol.messages import decode, encode
from tests.protocol.strategies import messages

DEFAULT_EXAMPLES = 2_000


def examples_from_env(default: int = DEFAULT_EXAMPLES) -> int:
    return int(os.environ.get("FUZZ_EXAMPLES", default))


# ---------------------------------------------------------------------------------------------
# Mutations of valid messages

_Mutation = Callable[[bytearray], None]


@st.composite
def _mutation(draw: st.DrawFn, size: int) -> _Mutation:
    at = draw(st.integers(0, max(size - 1, 0)))
    kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "digit"]))
    if kind == "flip":
        bit = draw(st.integers(0, 7))
        return lambda b: b.__setitem__(at, b[at] ^ (1 << bit)) if at < len(b) else None
    if kind == "set":
        value = draw(st.integers(0, 255))
        return lambda b: b.__setitem__(at, value) if at < len(b) else None
    if kind == "digit":  # plausible-looking damage: a different ASCII digit
        digit = draw(st.sampled_from(b"0123456789"))
        return lambda b: b.__setitem__(at, digit) if at < len(b) else None
    if kind == "insert":
        extra = draw(st.binary(min_size=1, max_size=4))
        return lambda b: b.__setitem__(slice(at, at), extra)
    if kind == "delete":
        count = draw(st.integers(1, 4))
        return lambda b: b.__delitem__(slice(at, at + count))
    return lambda b: b.__delitem__(slice(at, None))


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    raw = bytearray(encode(draw(messages)))
    if draw(st.booleans()):  # splice: the head of one message and the tail of another
        other = encode(draw(messages))
        raw[draw(st.integers(0, len(raw))) :] = other[draw(st.integers(0, len(other))) :]
    for mutate in draw(st.lists(_mutation(len(raw)), min_size=1, max_size=4)):
        mutate(raw)
    return bytes(raw)


# ---------------------------------------------------------------------------------------------
# Properties


def check_decode(raw: bytes) -> None:
    try:
        message = decode(raw)
    except DecodeError:
        return
    assert decode(encode(message)) == message


def check_frames(stream: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder()
    try:
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            for frame in decoder.feed(stream[start:end]):
                assert 0 < len(frame) <= decoder.frame_bytes_max
            assert decoder.buffered <= decoder.frame_bytes_max
    except FramingError:
        return


@st.composite
def chunked_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    stream = draw(st.binary(max_size=3000))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    return stream, cuts


def _check_chunked(stream_and_cuts: tuple[bytes, list[int]]) -> None:
    check_frames(*stream_and_cuts)


# name -> (strategy of inputs, property that must hold for each input)
TARGETS: dict[str, tuple[Callable[[], st.SearchStrategy[Any]], Callable[[Any], None]]] = {
    "bytes": (lambda: st.binary(max_size=600), lambda raw: check_decode(raw)),
    "mutations": (mutated_messages, lambda raw: check_decode(raw)),
    "frames": (chunked_streams, _check_chunked),
}


def run(name: str, examples: int) -> None:
    """Run one target for `examples` examples, without deadlines or a saved database."""
    strategy, check = TARGETS[name]
    test = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )(given(strategy())(check))
    test()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=examples_from_env())
    parser.add_argument("--target", choices=sorted(TARGETS), action="append")
    args = parser.parse_args()
    for name in args.target or sorted(TARGETS):
        started = time.perf_counter()
        run(name, args.examples)
        print(f"{name}: {args.examples} examples, {time.perf_counter() - started:.1f} s, ok")


if __name__ == "__main__":
    main()
