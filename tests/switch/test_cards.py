import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch import cards


@pytest.mark.parametrize("pan", ["6037701689095443", "6219861034529007", "4012888888881881"])
def test_luhn_accepts_published_valid_pans(pan):
    assert cards.luhn_is_valid(pan)


@pytest.mark.parametrize(
    "pan", ["6219861034529008", "6037701689095444", "", "1", "60377016890954a3"])
def test_luhn_rejects_invalid(pan):
    assert not cards.luhn_is_valid(pan)


@given(st.text(alphabet="0123456789", min_size=5, max_size=18))
def test_check_digit_makes_valid_and_any_other_digit_invalid(partial):
    digit = cards.luhn_check_digit(partial)
    assert cards.luhn_is_valid(partial + digit)
    for other in "0123456789":
        if other != digit:
            assert not cards.luhn_is_valid(partial + other)


def test_new_club_pan_is_in_bin_and_valid():
    pan = cards.new_club_pan("990100")
    assert pan.startswith("990100")
    assert len(pan) == 16
    assert cards.luhn_is_valid(pan)


@pytest.mark.parametrize("sheba", ["IR820540102680020817909002", "IR870570028180010653892101"])
def test_sheba_accepts_published_valid(sheba):
    assert cards.sheba_is_valid(sheba)


@pytest.mark.parametrize("sheba", [
    "IR012345678901234567890123",   # published invalid
    "IR820540102680020817909003",   # one digit changed
    "IR82054010268002081790900",    # too short
    "DE820540102680020817909002",   # not Iranian
    "ir820540102680020817909002",   # lower case
])
def test_sheba_rejects_invalid(sheba):
    assert not cards.sheba_is_valid(sheba)


@given(st.text(alphabet="0123456789", min_size=22, max_size=22))
def test_sheba_from_bban_round_trips(bban):
    sheba = cards.sheba_from_bban(bban)
    assert cards.sheba_is_valid(sheba)
    assert sheba[4:] == bban


async def test_database_refuses_invalid_sheba(conn):
    import asyncpg

    assert await conn.fetchval("SELECT sheba_is_valid('IR820540102680020817909002')")
    assert not await conn.fetchval("SELECT sheba_is_valid('IR012345678901234567890123')")
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            """INSERT INTO merchant (code, name, trade, sheba)
               VALUES ('m1', 'M', 'cafe', 'IR012345678901234567890123')""")
