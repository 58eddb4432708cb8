"""Expected declines: each a typed reason with exactly one response code, from one table.

The request functions in the database decide a decline before writing anything and return
its name; the processor looks it up here for the response code (a test checks the database's
table of names equals this one). Security refusals (63) and format errors (30) are not here:
they come from `protocol.errors` and change nothing, not even the request log.
"""

from __future__ import annotations

import enum

from protocol.fields import ResponseCode


class Decline(enum.Enum):
    # Named as the response codes they map to: one name per concept.
    DO_NOT_HONOUR = ResponseCode.DO_NOT_HONOUR
    INVALID_TRANSACTION = ResponseCode.INVALID_TRANSACTION
    INVALID_AMOUNT = ResponseCode.INVALID_AMOUNT
    INVALID_CARD_NUMBER = ResponseCode.INVALID_CARD_NUMBER
    ORIGINAL_NOT_FOUND = ResponseCode.ORIGINAL_NOT_FOUND
    INSUFFICIENT_FUNDS = ResponseCode.INSUFFICIENT_FUNDS
    EXPIRED_CARD = ResponseCode.EXPIRED_CARD
    NOT_PERMITTED_TO_CARD = ResponseCode.NOT_PERMITTED_TO_CARD
    NOT_PERMITTED_TO_TERMINAL = ResponseCode.NOT_PERMITTED_TO_TERMINAL
    RESTRICTED_CARD = ResponseCode.RESTRICTED_CARD
    TOO_LATE = ResponseCode.TOO_LATE
    DUPLICATE_TRANSMISSION = ResponseCode.DUPLICATE_TRANSMISSION
    TIME_OUT_OF_WINDOW = ResponseCode.TIME_OUT_OF_WINDOW

    @property
    def response_code(self) -> ResponseCode:
        return self.value

