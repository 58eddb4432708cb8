"""Hypothesis strategies for valid LSP-8583 messages, shared by the tests and the fuzzer."""

from __future__ import annotations

import string

from hypothesis import strategies as st

from protocol.fields import (
    AccountType,
    AmountType,
    Mti,
    NetworkCode,
    PosEntryMode,
    ProcessingCode,
    ResponseCode,
    Sign,
)
from protocol.messages import (
    AuthRequest,
    AuthResponse,
    ConfirmAdvice,
    ConfirmResponse,
    Message,
    NetworkRequest,
    NetworkResponse,
    ReversalAdvice,
    ReversalResponse,
)
from protocol.values import AdditionalData, AmountBlock, OriginalData

DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
AN = string.ascii_letters + string.digits + " "
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))


def digits(size: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=size, max_size=size)


def an(size: int) -> st.SearchStrategy[str]:
    return st.text(AN, min_size=size, max_size=size)


@st.composite
def mmdd(draw: st.DrawFn) -> str:
    month = draw(st.integers(1, 12))
    return f"{month:02d}{draw(st.integers(1, DAYS[month - 1])):02d}"


@st.composite
def hhmmss(draw: st.DrawFn) -> str:
    hour, minute, second = (
        draw(st.integers(0, 23)),
        draw(st.integers(0, 59)),
        draw(st.integers(0, 59)),
    )
    return f"{hour:02d}{minute:02d}{second:02d}"


transmission_times = st.builds(lambda d, t: d + t, mmdd(), hhmmss())
stans = digits(6)
rrns = an(12)
amounts_rials = st.integers(0, 10**12 - 1)
ksns = st.binary(min_size=12, max_size=12)
macs = st.binary(min_size=8, max_size=8)
card_data = st.binary(min_size=1, max_size=512)

amount_blocks = st.builds(
    AmountBlock,
    st.sampled_from(AccountType),
    st.sampled_from(AmountType),
    amounts_rials,
    st.sampled_from(Sign),
)
amount_lists = st.lists(amount_blocks, max_size=12).map(tuple)

_category = st.text(PRINTABLE.replace(",", ""), min_size=1, max_size=8)
_unknown_tag = st.text(string.ascii_uppercase + string.digits, min_size=2, max_size=2).filter(
    lambda tag: tag not in ("PA", "OR", "IT")
)
additional_data = st.builds(
    AdditionalData,
    partial_approval=st.none() | st.booleans(),
    original_rrn=st.none() | rrns,
    item_categories=st.none() | st.lists(_category, min_size=1, max_size=6).map(tuple),
    unknown=st.lists(st.tuples(_unknown_tag, st.text(PRINTABLE, max_size=40)), max_size=3).map(
        tuple
    ),
).filter(lambda data: data.encode() != "")

originals = st.builds(OriginalData, st.sampled_from(Mti), stans, transmission_times)


@st.composite
def network_requests(draw: st.DrawFn) -> NetworkRequest:
    code = draw(st.sampled_from(NetworkCode))
    return NetworkRequest(
        network_code=code,
        transmission_time=draw(transmission_times),
        stan=draw(stans),
        ksn=draw(ksns),
        card_data=draw(card_data) if code is NetworkCode.SIGN_ON else None,
        mac=draw(macs),
    )


auth_requests = st.builds(
    AuthRequest,
    processing_code=st.sampled_from(ProcessingCode),
    amount=amounts_rials,
    transmission_time=transmission_times,
    stan=stans,
    local_time=hhmmss(),
    local_date=mmdd(),
    pos_entry_mode=st.sampled_from(PosEntryMode),
    ksn=ksns,
    card_data=card_data,
    additional_data=st.none() | additional_data,
    mac=macs,
)
confirm_advices = st.builds(
    ConfirmAdvice,
    processing_code=st.sampled_from(ProcessingCode),
    amount=amounts_rials,
    transmission_time=transmission_times,
    stan=stans,
    rrn=rrns,
    ksn=ksns,
    original=originals,
    mac=macs,
)
reversal_advices = st.builds(
    ReversalAdvice,
    processing_code=st.sampled_from(ProcessingCode),
    amount=amounts_rials,
    transmission_time=transmission_times,
    stan=stans,
    ksn=ksns,
    original=originals,
    rrn=st.none() | rrns,
    mac=macs,
)

# In responses an echoed field may be missing only when the response code is 30, and result
# data (38, 54) is absent when it is 30 or 63.
_ECHOED = {
    "processing_code": st.sampled_from(ProcessingCode),
    "amount": amounts_rials,
    "transmission_time": transmission_times,
    "stan": stans,
    "ksn": ksns,
    "network_code": st.sampled_from(NetworkCode),
    "rrn": rrns,
}
_RESULT = {"approval_code": an(6), "amounts": amount_lists}
_OPTIONAL = {"rrn"}  # conditional in 0110 and 0410 whatever the code


@st.composite
def _response(draw: st.DrawFn, cls: type, echoed: tuple[str, ...], results: tuple[str, ...]):
    code = draw(st.sampled_from(ResponseCode))
    values = {"response_code": code, "mac": draw(macs)}
    for name in echoed:
        optional = code is ResponseCode.FORMAT_ERROR or (name in _OPTIONAL and cls in _RRN_OPTIONAL)
        values[name] = draw(st.none() | _ECHOED[name]) if optional else draw(_ECHOED[name])
    if code not in (ResponseCode.FORMAT_ERROR, ResponseCode.SECURITY_VIOLATION):
        for name in results:  # an empty tuple already means "no field 54"
            values[name] = draw(_RESULT[name] if name == "amounts" else st.none() | _RESULT[name])
    return cls(**values)


_RRN_OPTIONAL = (AuthResponse, ReversalResponse)
_COMMON = ("processing_code", "amount", "transmission_time", "stan", "ksn", "rrn")

network_responses = _response(
    NetworkResponse, ("network_code", "transmission_time", "stan", "ksn"), ()
)
auth_responses = _response(AuthResponse, _COMMON, ("approval_code", "amounts"))
confirm_responses = _response(ConfirmResponse, _COMMON, ("amounts",))
reversal_responses = _response(ReversalResponse, _COMMON, ())

MESSAGE_STRATEGIES: dict[str, st.SearchStrategy[Message]] = {
    "0800": network_requests(),
    "0810": network_responses,
    "0100": auth_requests,
    "0110": auth_responses,
    "0220": confirm_advices,
    "0230": confirm_responses,
    "0400": reversal_advices,
    "0410": reversal_responses,
}
messages: st.SearchStrategy[Message] = st.one_of(*MESSAGE_STRATEGIES.values())
