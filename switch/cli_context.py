"""What every CLI command gets: settings, and a way to the database in one transaction."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from switch import db, migrate
from switch.config import Settings
from switch.keys import KeyStore, load, load_or_create


class CommandError(Exception):
    """A refused command (bad argument or state); exit status 2, nothing written."""


@dataclass
class Context:
    settings: Settings
    _url: str | None = field(default=None, repr=False)

    async def url(self) -> str:
        if self._url is None:
            self._url = await db.resolve_url(self.settings)
        return self._url

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await db.connect(await self.url(), self.settings)
        try:
            yield conn
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A migrated database, one transaction: a command that fails writes nothing."""
        async with self.connection() as conn:
            await migrate.migrate(conn)
            async with conn.transaction():
                yield conn

    def keys(self, create: bool = False) -> KeyStore:
        path = self.settings.key_file
        return load_or_create(path) if create else load(path)


def print_table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Rows under a header, in columns as wide as their widest cell."""
    print("\n".join(table_lines(header, rows)))


def table_lines(header: tuple[str, ...], rows: Sequence[tuple[Any, ...]],
                right: frozenset[int] = frozenset()) -> list[str]:
    """Rows under a header, in columns as wide as their widest cell (nothing is cut), the
    columns numbered in `right` aligned right (amounts)."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in cells]


def whole_number(unit: str) -> Callable[[str], int]:
    """An argparse type: a whole number, 0 or more, of `unit` (e.g. rials)."""
    def parse(text: str) -> int:
        if not text.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of {unit}")
        return int(text)
    return parse
