"""The test suite's card-number scan of every log it produced.

For the whole session, every log record of the test process is written to a file in a log
directory, unmasked (the message, its `extra` fields and any exception text), so the scan
tests what the code passes to the logger, not the formatter's last-defence mask. A test that
starts a CLI process runs it with `run_logged`, which stores the process's stdout and stderr
in the same directory; the directory is also in the environment as `LOYALTY_TEST_LOG_DIR`
for tests that start processes some other way. At the end of the session every file there is
searched for a Luhn-valid 16-digit card number, one run or grouped (`switch.logs.find_pans`);
one found fails the run (tests/conftest.py, `pytest_sessionfinish`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from switch.logs import RECORD_ATTRIBUTES, find_pans

LOG_DIR_ENV = "LOYALTY_TEST_LOG_DIR"
_runs = itertools.count()


class RawFormatter(logging.Formatter):
    """The record as the code made it: message, `extra` fields, exception; nothing masked."""

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in RECORD_ATTRIBUTES}
        text = f"{record.levelname} {record.name} {record.getMessage()}"
        if extra:
            text += " " + json.dumps(extra, default=repr)
        if record.exc_info is not None:
            text += "\n" + self.formatException(record.exc_info)
        return text


def capture_records(log_dir: Path, logger: logging.Logger | None = None) -> logging.Handler:
    """Write every record reaching `logger` (default: the root, i.e. every record of this
    process), at every level, to a file in `log_dir`."""
    handler = logging.FileHandler(log_dir / f"pytest-{os.getpid()}.log", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(RawFormatter())
    (logging.getLogger() if logger is None else logger).addHandler(handler)
    return handler


def log_dir() -> Path:
    return Path(os.environ[LOG_DIR_ENV])


def run_logged(argv: Sequence[str], *, name: str | None = None, **kwargs: Any
               ) -> subprocess.CompletedProcess[str]:
    """`subprocess.run` with output captured as text and copied into the log directory
    (under `name`, default the program's); a timeout's partial output is kept too."""
    label = name or Path(argv[0]).name
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    except subprocess.TimeoutExpired as exc:
        store_output(label, _text(exc.stdout), _text(exc.stderr))
        raise
    store_output(label, done.stdout, done.stderr)
    return done


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def store_output(name: str, stdout: str, stderr: str) -> None:
    """Keep a process's output for the end-of-session scan."""
    stem = log_dir() / f"{name}-{os.getpid()}-{next(_runs)}"
    stem.with_suffix(".stdout").write_text(stdout, encoding="utf-8")
    stem.with_suffix(".stderr").write_text(stderr, encoding="utf-8")


def scan(directory: Path) -> list[str]:
    """`file: number` for every Luhn-valid 16-digit number in the files of `directory`."""
    findings: list[str] = []
    for path in sorted(directory.iterdir()):
        text = path.read_text(encoding="utf-8", errors="replace")
        findings.extend(f"{path.name}: {pan}" for pan in find_pans(text))
    return findings
