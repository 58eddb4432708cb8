"""`sim load`'s exit status through its entry point (`simulator.cli.main`), over real TCP
without a switch: 1 when the run completed no transaction, whether no terminal could
connect or the one listening never answered."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator import cli
from simulator import profile as profiles
from tests.simulator.test_load_run import closed_port

TIDS = ("CAFE0001", "CAFE0002")


def _profiles(folder: Path, port: int) -> Path:
    for tid in TIDS:
        profiles.save(folder / f"{tid}.json",
                      profiles.Profile(tid, bytes(8), bytes(16), "127.0.0.1", port))
    return folder


@pytest.fixture
def mute_port() -> Iterator[int]:
    """A listener that never accepts: the kernel completes the connections (they wait in
    its queue), the requests are buffered, and no answer ever comes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_load_exits_1_when_no_terminal_can_connect(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _profiles(tmp_path, closed_port())
    code = cli.main(["load", "--terminals", "2", "--seconds", "0.2", "--json",
                     "--profiles", str(folder)])
    out, err = capsys.readouterr()
    assert code == 1
    assert '"connect_failed": 2' in out, "the report is printed all the same"
    assert "sim: load: no transaction completed (no terminal could connect)" in err


def test_load_exits_1_when_nothing_completes(
        tmp_path: Path, mute_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _profiles(tmp_path, mute_port)
    code = cli.main(["load", "--terminals", "2", "--seconds", "0.2", "--timeout-s", "0.2",
                     "--profiles", str(folder)])
    out, err = capsys.readouterr()
    assert code == 1
    assert " 0 completed, " in out and "failed to connect" not in out
    assert re.search(r"^sim: load: no transaction completed \([1-9]\d* started, none "
                     r"completed\)$", err, re.MULTILINE)


def test_load_exits_2_on_a_bad_argument_before_connecting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _profiles(tmp_path, closed_port())
    code = cli.main(["load", "--terminals", "3", "--seconds", "1", "--profiles", str(folder)])
    assert code == 2 and "--terminals 3" in capsys.readouterr().err
