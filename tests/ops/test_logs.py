"""Structured logs: the PAN mask, the JSON formatter, `configure`, and the suite's log scan."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch import cli, logs
from switch.cards import luhn_check_digit, luhn_is_valid, new_club_pan
from switch.config import ConfigError, load_settings
from tests import logscan

VISA_TEST = "4111111111111111"  # Luhn-valid
NOT_LUHN = "4111111111111112"


@pytest.mark.parametrize(("text", "masked"), [
    (VISA_TEST, "411111******1111"),
    (f"pan={VISA_TEST}.", "pan=411111******1111."),
    (f"a {VISA_TEST} b {VISA_TEST}", "a 411111******1111 b 411111******1111"),
    (NOT_LUHN, NOT_LUHN),  # not a card number: amounts and references stay readable
    ("4111111111111111" + "0", "41111111111111110"),  # 17 digits: Luhn decides alone
    ("6037990000000006", "603799******0006"),
    ("4222222222222", "422222***2222"),  # 13 digits, Luhn-valid
    ("123456789012", "123456789012"),  # 12 digits: an RRN or an amount, never masked
    ("x" + "9" * 20, "x" + "9" * 20),  # longer than any PAN
    ("603799******1234", "603799******1234"),  # already masked
])
def test_mask_pans_table(text: str, masked: str) -> None:
    assert logs.mask_pans(text) == masked


SPACED = "6037 9912 3456 7893"  # Luhn-valid, the way it is printed on the card
AMEX = "3782 822463 10005"      # 4-6-5
DINERS = "3056 930902 5904"     # 4-6-4
RRN_STAN = "123456789012 000128"  # 18 digits, Luhn-valid together, but a 12 and a 6


@pytest.mark.parametrize(("text", "masked"), [
    (SPACED, "603799******7893"),
    ("6037-9912-3456-7893", "603799******7893"),
    (f"card: {SPACED}.", "card: 603799******7893."),
    (f"({SPACED}, {SPACED})", "(603799******7893, 603799******7893)"),
    ("6037 9912-3456 7893", "603799******7893"),  # separators mixed: still one number
    (AMEX, "378282*****0005"),
    (DINERS, "305693****5904"),
    ("4111 1111 1111 1111 110", "411111*********1110"),  # 19 digits, 4-4-4-4-3
    # Another group joined on does not hide it: a year, an expiry, a terminal's number.
    (f"{SPACED} 1405/09/03", "603799******7893 1405/09/03"),
    (f"1404 {SPACED}", "1404 603799******7893"),
    # A group before the PAN that makes a card number with the PAN's first groups: both
    # are masked as one, nothing of the PAN's end shows.
    (f"1409 {SPACED}", "140960**********7893"),
    ("6037 9912 3456 7894", "6037 9912 3456 7894"),  # not Luhn-valid
    # Not card layouts, so never masked whatever Luhn says: an RRN and a STAN, amounts, a
    # date, a phone number, a Sheba in groups (the first group is 2 digits), a card number
    # split inside a group, two spaces.
    (RRN_STAN, RRN_STAN),
    (f"rrn {RRN_STAN}", f"rrn {RRN_STAN}"),
    ("250000 3750 1620 16000", "250000 3750 1620 16000"),
    ("1405-09-03 14:30", "1405-09-03 14:30"),
    ("0912 345 6789", "0912 345 6789"),
    ("IR06 0170 0000 0012 3456 7890 01", "IR06 0170 0000 0012 3456 7890 01"),
    ("603 7991 2345 6789 3", "603 7991 2345 6789 3"),
    ("6037  9912  3456  7893", "6037  9912  3456  7893"),
    ("603799******7893", "603799******7893"),  # already masked
])
def test_mask_pans_grouped_table(text: str, masked: str) -> None:
    assert luhn_is_valid(RRN_STAN.replace(" ", ""))  # the table's premise
    assert logs.mask_pans(text) == masked


@pytest.mark.parametrize(("text", "found"), [
    (f"x {SPACED} y", ["6037991234567893"]),
    (f"{VISA_TEST} and 6037-9912-3456-7893", [VISA_TEST, "6037991234567893"]),
    (RRN_STAN, []),
    (AMEX, []),  # 15 digits: the scan looks for 16
])
def test_find_pans_grouped(text: str, found: list[str]) -> None:
    assert logs.find_pans(text) == found


def _pan(body: str) -> str:
    return body + luhn_check_digit(body)


pans = st.integers(12, 18).flatmap(
    lambda n: st.text("0123456789", min_size=n, max_size=n)).map(_pan)
separators = st.text(alphabet=' =:/,.*{}"-_xyzABC\nآبپ۱۲', min_size=1, max_size=5)


@given(pans, separators, separators)
def test_a_luhn_valid_pan_anywhere_is_masked(pan: str, before: str, after: str) -> None:
    out = logs.mask_pans(before + pan + after)
    assert pan not in out
    assert out == before + pan[:6] + "*" * (len(pan) - 10) + pan[-4:] + after


@given(pans.filter(lambda pan: len(pan) == 16), separators, separators,
       st.sampled_from([" ", "-"]))
def test_a_grouped_pan_anywhere_is_masked(pan: str, before: str, after: str,
                                          sep: str) -> None:
    grouped = sep.join(pan[i:i + 4] for i in range(0, 16, 4))
    out = logs.mask_pans(before + grouped + after)
    assert out == before + pan[:6] + "*" * 6 + pan[-4:] + after


@given(st.text())
def test_mask_leaves_no_card_number_and_only_drops_separators(text: str) -> None:
    out = logs.mask_pans(text)
    assert logs.find_pans(out) == []
    # Only a grouped number's separators go: with them removed, the lengths agree.
    assert len(out.replace(" ", "").replace("-", "")) == \
        len(text.replace(" ", "").replace("-", ""))


@pytest.mark.parametrize(("text", "found"), [
    (f"x {VISA_TEST} y", [VISA_TEST]),
    (NOT_LUHN, []),
    ("4222222222222", []),  # 13 digits: the scan looks for 16
    (VISA_TEST + "1", []),  # part of a longer run
    ("411111******1111", []),
])
def test_find_pans(text: str, found: list[str]) -> None:
    assert logs.find_pans(text) == found


def _record(msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("switch.test", level, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def test_json_line_has_event_fields_and_masks_a_leaked_pan() -> None:
    line = logs.JsonFormatter().format(_record(
        "request_declined", reason="INSUFFICIENT_FUNDS", rrn="000000000042", stan="000007",
        note=f"leaked {VISA_TEST}"))
    assert "\n" not in line
    data = json.loads(line)
    assert data["event"] == "request_declined"
    assert data["level"] == "info" and data["logger"] == "switch.test"
    assert data["ts"].endswith("Z")
    assert (data["reason"], data["rrn"], data["stan"]) == ("INSUFFICIENT_FUNDS",
                                                          "000000000042", "000007")
    assert data["note"] == "leaked 411111******1111"


def test_json_line_stays_valid_when_a_number_or_a_nested_value_is_masked() -> None:
    line = logs.JsonFormatter().format(_record(
        "event", as_int=int(VISA_TEST), as_float=float(VISA_TEST), amount=4111111111111112,
        nested={"list": [VISA_TEST, 5], VISA_TEST: None}, other=Path(VISA_TEST)))
    data = json.loads(line)
    assert VISA_TEST not in line
    assert data["as_int"] == "411111******1111"
    assert data["as_float"] == "411111******1111.0"
    assert data["amount"] == 4111111111111112  # not Luhn-valid: stays a number
    assert data["nested"] == {"list": ["411111******1111", 5], "411111******1111": None}
    assert data["other"] == "411111******1111"


def test_json_line_masks_a_pan_in_an_exception() -> None:
    try:
        raise ValueError(f"bad card {VISA_TEST}")
    except ValueError:
        record = _record("boom", logging.ERROR)
        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    assert VISA_TEST not in line and "411111******1111" in json.loads(line)["exception"]


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_configure_sets_the_level_and_replaces_only_its_own_handler(
        root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    others = list(root_logger.handlers)
    logs.configure("warning")
    logs.configure("info")
    assert root_logger.level == logging.INFO
    assert len([h for h in root_logger.handlers if h not in others]) == 1
    assert all(h in root_logger.handlers for h in others)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)  # the handler follows sys.stderr
    logging.getLogger("switch.x").debug("hidden")
    logging.getLogger("switch.x").info("shown", extra={"count": 3})
    lines = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert [(d["event"], d["count"]) for d in lines] == [("shown", 3)]


def test_the_cli_leaves_the_root_logger_as_it_found_it(
        root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`main` in process (as tests run it) takes its log handler and level away on return,
    so a test that runs it cannot change what a later test's root logger holds."""
    handlers, level = list(root_logger.handlers), root_logger.level
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("LOYALTY_LOG_LEVEL", "warning")  # not the suite's debug
    for _ in range(2):
        assert cli.main(["db", "url"]) == 0
    assert "postgresql://nobody@127.0.0.1:1/none" in capsys.readouterr().out
    assert (root_logger.handlers, root_logger.level) == (handlers, level)


def test_configured_puts_back_the_handler_it_replaced(root_logger: logging.Logger) -> None:
    logs.configure("info")
    outer = [h for h in root_logger.handlers if isinstance(h, logs._StderrHandler)]
    with logs.configured("error"):
        assert root_logger.level == logging.ERROR
        assert not any(h in root_logger.handlers for h in outer), "replaced, not stacked"
    assert root_logger.level == logging.INFO
    assert [h for h in root_logger.handlers if isinstance(h, logs._StderrHandler)] == outer


def test_log_level_setting() -> None:
    assert load_settings(environ={"LOYALTY_LOG_LEVEL": "DEBUG"}).log_level == "debug"
    with pytest.raises(ConfigError, match="log_level"):
        load_settings(environ={"LOYALTY_LOG_LEVEL": "verbose"})


def test_the_scan_finds_a_planted_pan_in_records_and_process_output(tmp_path: Path) -> None:
    pan = new_club_pan("603799")
    assert luhn_is_valid(pan)
    # A logger of its own that does not propagate: the planted number must not reach the
    # session's own capture (it would fail the run, as it should).
    planted = logging.getLogger("tests.planted")
    planted.propagate = False
    planted.setLevel(logging.DEBUG)
    handler = logscan.capture_records(tmp_path, planted)
    try:
        planted.debug("oops", extra={"card": pan})
    finally:
        planted.removeHandler(handler)
        handler.close()
    (tmp_path / "cli.stderr").write_text(f"printed {VISA_TEST}\n")
    (tmp_path / "clean.stdout").write_text("603799******1234 000000000042\n")
    assert sorted(logscan.scan(tmp_path)) == sorted(
        [f"cli.stderr: {VISA_TEST}", f"pytest-{os.getpid()}.log: {pan}"])


_SPAWNS = ("subprocess.run(", "subprocess.Popen(", "create_subprocess_exec(",
           "create_subprocess_shell(", "os.system(")


def test_every_test_that_starts_a_process_keeps_its_output_for_the_scan() -> None:
    """A test starting a process must hand its output to the log scan (tests/logscan.py):
    `run_logged`, or `store_output` for a process it drives itself."""
    root = Path(__file__).resolve().parents[1]
    missing = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if path.name == "logscan.py" or not any(spawn in text for spawn in _SPAWNS):
            continue
        if "logscan.run_logged(" not in text and "logscan.store_output(" not in text:
            missing.append(str(path.relative_to(root)))
    assert not missing, f"processes whose output escapes the log scan: {missing}"
