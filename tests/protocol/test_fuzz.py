"""Bounded fuzz runs (FUZZ_EXAMPLES to change the count); see tests/protocol/fuzz_decode.py."""

from __future__ import annotations

import pytest

from protocol.errors import DecodeError
from protocol.messages import decode
from tests.protocol import fuzz_decode


@pytest.mark.parametrize("target", sorted(fuzz_decode.TARGETS))
def test_fuzz(target):
    fuzz_decode.run(target, fuzz_decode.examples_from_env())


def test_the_harness_would_notice_a_foreign_exception(monkeypatch):
    """A harness that swallowed everything would pass whatever decode did."""

    def broken_decode(raw):
        raise KeyError("not a DecodeError")

    monkeypatch.setattr(fuzz_decode, "decode", broken_decode)
    with pytest.raises(KeyError):
        fuzz_decode.run("bytes", 5)


def test_mutations_do_reach_decode_errors_and_successes():
    """The mutation strategy must produce both kinds of input, or it explores nothing."""
    from hypothesis import find

    find(fuzz_decode.mutated_messages(), lambda raw: _decodes(raw))
    find(fuzz_decode.mutated_messages(), lambda raw: not _decodes(raw))


def _decodes(raw: bytes) -> bool:
    try:
        decode(raw)
    except DecodeError:
        return False
    return True
