"""Card numbers and bank accounts: Luhn, club PAN issuance, Sheba (IBAN) validation."""

from __future__ import annotations

import re
import secrets

PAN_DIGITS = 16
_SHEBA = re.compile(r"^IR[0-9]{24}$")


def luhn_check_digit(partial: str) -> str:
    """The digit that makes `partial + digit` pass the Luhn check."""
    assert partial.isdigit()
    total = 0
    # Double every second digit counting from the right of the final number, i.e. starting
    # with the last digit of `partial`.
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_is_valid(pan: str) -> bool:
    return len(pan) >= 2 and pan.isdigit() and luhn_check_digit(pan[:-1]) == pan[-1]


def new_club_pan(bin6: str, body: str | None = None) -> str:
    """A 16-digit club PAN in the network's BIN range; random unless `body` (9 digits) given."""
    assert len(bin6) == 6 and bin6.isdigit()
    body = f"{secrets.randbelow(10**9):09d}" if body is None else body
    assert len(body) == 9 and body.isdigit()
    partial = bin6 + body
    return partial + luhn_check_digit(partial)


def sheba_is_valid(sheba: str) -> bool:
    """ISO 7064 MOD 97-10 as for any IBAN: move 'IR' and the check digits to the end,
    letters to numbers (I=18, R=27), and the number mod 97 must be 1."""
    if not _SHEBA.match(sheba):
        return False
    return int(sheba[4:] + "1827" + sheba[2:4]) % 97 == 1


def sheba_from_bban(bban: str) -> str:
    """A valid Sheba for a 22-digit account number (used by the demo data)."""
    assert len(bban) == 22 and bban.isdigit()
    check = 98 - int(bban + "1827" + "00") % 97
    return f"IR{check:02d}{bban}"


def is_valid_expiry(yymm: str) -> bool:
    return len(yymm) == 4 and yymm.isdigit() and 1 <= int(yymm[2:]) <= 12
