"""Fixtures shared by the switch tests."""

from collections.abc import AsyncIterator

import asyncpg
import pytest

from switch.cli import main


@pytest.fixture
def cli(db_url, tmp_path, monkeypatch, capsys):
    """`cli(*argv)` runs `loyalty` in process on the test's database and key file, and
    returns (exit status, stdout, stderr)."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("LOYALTY_KEY_FILE", str(tmp_path / "keys.json"))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    run.key_file = tmp_path / "keys.json"  # type: ignore[attr-defined]
    return run


@pytest.fixture
async def pool(db_url) -> AsyncIterator[asyncpg.Pool]:
    """Connections for concurrent callers (and for the sweeper, which takes a pool)."""
    async with asyncpg.create_pool(db_url, min_size=10, max_size=10) as p:
        yield p
