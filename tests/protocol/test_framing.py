"""FrameDecoder and encode_frame: chunking, bounds, and failure behaviour."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import DecodeError, FramingError
from protocol.framing import FRAME_BYTES_MAX, FrameDecoder, encode_frame

bodies = st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8)


def test_encode_frame_prefixes_big_endian_length():
    assert encode_frame(b"abc") == b"\x00\x03abc"
    assert encode_frame(b"x" * 300)[:2] == b"\x01\x2c"


@pytest.mark.parametrize("size", [0, FRAME_BYTES_MAX + 1])
def test_encode_frame_refuses_out_of_bounds(size):
    with pytest.raises(FramingError):
        encode_frame(b"x" * size)


def test_encode_frame_accepts_the_maximum():
    assert len(encode_frame(b"x" * FRAME_BYTES_MAX)) == FRAME_BYTES_MAX + 2


def test_framing_error_is_a_decode_error():
    assert issubclass(FramingError, DecodeError)


@given(bodies)
def test_bytes_fed_one_at_a_time(frames):
    decoder = FrameDecoder()
    stream = b"".join(encode_frame(f) for f in frames)
    out: list[bytes] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == frames
    assert not decoder.pending


@given(bodies, st.data())
def test_bytes_fed_in_random_chunks(frames, data):
    decoder = FrameDecoder()
    stream = b"".join(encode_frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[start:end])
    assert out == frames
    assert not decoder.pending
    assert decoder.buffered == 0


def test_everything_in_one_chunk():
    frames = [b"a", b"bb", b"ccc"]
    assert FrameDecoder().feed(b"".join(encode_frame(f) for f in frames)) == frames


def test_pending_tracks_a_started_frame():
    decoder = FrameDecoder()
    assert not decoder.pending
    assert decoder.feed(b"\x00") == []
    assert decoder.pending  # half a prefix is a started frame
    assert decoder.feed(b"\x03ab") == []
    assert decoder.pending
    assert decoder.buffered == 2
    assert decoder.feed(b"c") == [b"abc"]
    assert not decoder.pending


def test_length_zero_rejected_as_soon_as_prefix_is_seen():
    decoder = FrameDecoder()
    decoder.feed(b"\x00")
    with pytest.raises(FramingError) as info:
        decoder.feed(b"\x00")
    assert info.value.position == 0


def test_oversized_length_rejected_before_any_body_is_buffered():
    decoder = FrameDecoder()
    prefix = (FRAME_BYTES_MAX + 1).to_bytes(2, "big")
    with pytest.raises(FramingError):
        decoder.feed(prefix + b"x" * 100)
    assert decoder.buffered == 0


def test_error_position_counts_earlier_frames():
    decoder = FrameDecoder()
    with pytest.raises(FramingError) as info:
        decoder.feed(encode_frame(b"abcd") + b"\xff\xff")
    assert info.value.position == 6


def test_decoder_stays_failed_after_an_error():
    decoder = FrameDecoder()
    with pytest.raises(FramingError):
        decoder.feed(b"\x00\x00")
    with pytest.raises(FramingError):
        decoder.feed(encode_frame(b"ok"))


def test_limit_is_a_constructor_parameter():
    decoder = FrameDecoder(frame_bytes_max=4)
    assert decoder.feed(encode_frame(b"1234")) == [b"1234"]
    with pytest.raises(FramingError):
        decoder.feed(b"\x00\x05")


def test_maximum_frame_passes_and_buffer_stays_bounded():
    decoder = FrameDecoder()
    stream = encode_frame(b"y" * FRAME_BYTES_MAX)
    assert decoder.feed(stream[:-1]) == []
    assert decoder.buffered == FRAME_BYTES_MAX - 1
    assert decoder.feed(stream[-1:]) == [b"y" * FRAME_BYTES_MAX]


def test_accepts_bytearray_and_memoryview():
    decoder = FrameDecoder()
    assert decoder.feed(bytearray(b"\x00\x01")) == []
    assert decoder.feed(memoryview(b"z")) == [b"z"]
