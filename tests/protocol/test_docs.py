"""docs/protocol.md must show exactly what protocol.examples generates, and that must be right."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from protocol import examples
from protocol.cardblock import decrypt_card_data
from protocol.dukpt import Ksn
from protocol.framing import FrameDecoder
from protocol.mac import verify_mac
from protocol.messages import AuthRequest, NetworkRequest, decode, mac_input

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
FRAME_BLOCK = re.compile(r"Frame, (\d+) bytes:\n\n```\n([0-9a-f\n]+)```")


@pytest.fixture(scope="module")
def document() -> str:
    return DOC.read_text()


@pytest.fixture(scope="module")
def built() -> list[examples.Example]:
    return examples.build()


def test_examples_section_matches_the_generator(document, built):
    start = document.index(examples.BEGIN)
    end = document.index(examples.END) + len(examples.END)
    assert document[start:end] == examples.render(built), (
        "docs/protocol.md is stale: run python -m protocol.examples --write docs/protocol.md"
    )


def test_replace_section_is_idempotent(document, built):
    assert examples.replace_section(document, examples.render(built)) == document


def test_every_message_type_has_an_example(built):
    assert sorted(e.message.MTI.value for e in built) == [
        "0100", "0110", "0220", "0230", "0400", "0410", "0800", "0810",
    ]  # fmt: skip


def test_frames_in_the_document_decode_and_authenticate(document, built):
    """Read the hex back from the page, as a vendor would, and check it with the host keys."""
    blocks = FRAME_BLOCK.findall(document)
    assert len(blocks) == len(built)
    host = examples.host_keys()
    for (size, hex_text), example in zip(blocks, built, strict=True):
        frame = bytes.fromhex(hex_text.replace("\n", ""))
        assert len(frame) == int(size)
        [raw] = FrameDecoder().feed(frame)
        assert raw == example.raw
        message = decode(raw)
        assert message == dataclasses.replace(example.message, mac=raw[-8:])
        assert message.ksn is not None
        keys = host.working_keys(Ksn.from_bytes(message.ksn))
        is_request = example.mac_usage == "2000"
        mac_key = keys.mac_request if is_request else keys.mac_response
        assert verify_mac(mac_key, mac_input(raw), raw[-8:])
        assert not verify_mac(
            keys.mac_response if is_request else keys.mac_request, mac_input(raw), raw[-8:]
        )
        if isinstance(message, NetworkRequest | AuthRequest) and message.card_data is not None:
            card = decrypt_card_data(keys.data_encrypt, message.card_data)
            assert card == example.card
