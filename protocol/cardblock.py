"""Field 62: the encrypted card data block.

Plaintext layout: `TID (8 ASCII) || PANLEN (2 digits) || PAN || EXPIRY (YYMM)`, padded with
ISO/IEC 9797-1 method 2 (one 0x80 byte, then zeros up to a multiple of 16 — so a plaintext
already a multiple of 16 gains a whole block) and encrypted with AES-128-CBC, zero IV, under
the DUKPT data-encryption working key (usage 3000). A zero IV is safe here only because every
message uses a fresh working key, so no two plaintexts are ever encrypted under one key.

Every decryption failure — length, padding, layout, character set — raises the same
`SecurityError("bad_padding")` with no detail. One indistinguishable error, plus the switch
checking the MAC before decrypting, leaves no padding oracle. Decrypted content never goes
into an exception, and `CardData` shows only a masked PAN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol.errors import SecurityError

BLOCK_BYTES = 16
BLOB_BYTES_MAX = 512  # field 62 is LLLVAR ..512
TID_BYTES = 8
PAN_LENGTHS = range(12, 20)
SIGN_ON_EXPIRY = "0000"
_ZERO_IV = bytes(BLOCK_BYTES)
_PAD_MARK = 0x80


def mask_pan(pan: str) -> str:
    """First 6 and last 4 digits with `*` between, e.g. 603799******1234.

    Anything that is not a plausible PAN length is masked whole, so a malformed value cannot
    leak through the display path either.
    """
    if len(pan) not in PAN_LENGTHS:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def _is_digits(text: str) -> bool:
    # str.isdigit alone accepts non-ASCII digits such as "²" or Arabic-Indic numerals.
    return text.isascii() and text.isdigit()


def _card_data_problem(tid: str, pan: str, expiry: str) -> str | None:
    """Why these values are not a valid card block, or None; the reason never quotes them."""
    if len(tid) != TID_BYTES or not (tid.isascii() and tid.isprintable()):
        return "TID must be 8 printable ASCII characters"
    if pan and (len(pan) not in PAN_LENGTHS or not _is_digits(pan)):
        return "PAN must be empty or 12 to 19 digits"
    if len(expiry) != 4 or not _is_digits(expiry):
        return "expiry must be 4 digits (YYMM)"
    if not pan and expiry != SIGN_ON_EXPIRY:
        return "a block without a PAN must carry expiry 0000"
    if pan and not 1 <= int(expiry[2:]) <= 12:
        return "expiry month must be 01 to 12"
    return None


@dataclass(frozen=True, slots=True, repr=False)
class CardData:
    """The decrypted contents of field 62. A sign-on carries an empty PAN and expiry 0000."""

    tid: str
    pan: str = field(repr=False)
    expiry: str = field(repr=False)

    def __post_init__(self) -> None:
        problem = _card_data_problem(self.tid, self.pan, self.expiry)
        if problem is not None:
            raise ValueError(problem)

    def __repr__(self) -> str:
        return f"CardData(tid={self.tid!r}, pan={mask_pan(self.pan)!r})"

    __str__ = __repr__


def aes_cbc_encrypt(key: bytes, plaintext: bytes) -> bytes:
    """Raw AES-CBC with a zero IV and no padding; `plaintext` must be whole blocks."""
    assert len(plaintext) % BLOCK_BYTES == 0, "caller pads"
    encryptor = Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV)).encryptor()
    return encryptor.update(plaintext) + encryptor.finalize()


def aes_cbc_decrypt(key: bytes, ciphertext: bytes) -> bytes:
    """Raw AES-CBC decryption with a zero IV and no unpadding; input must be whole blocks."""
    assert len(ciphertext) % BLOCK_BYTES == 0, "caller checks the length"
    decryptor = Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV)).decryptor()
    return decryptor.update(ciphertext) + decryptor.finalize()


def pad_method2(data: bytes) -> bytes:
    """ISO/IEC 9797-1 padding method 2: 0x80, then zeros to the next multiple of 16."""
    padded = data + bytes((_PAD_MARK,))
    return padded + bytes(-len(padded) % BLOCK_BYTES)


def unpad_method2(padded: bytes) -> bytes | None:
    """The data before method-2 padding, or None when the padding is malformed."""
    stripped = padded.rstrip(b"\x00")
    # The pad is 1..16 bytes, so the 0x80 mark must sit within the last block.
    if not stripped or stripped[-1] != _PAD_MARK or len(padded) - len(stripped) >= BLOCK_BYTES:
        return None
    return stripped[:-1]


def encrypt_card_data(key: bytes, card: CardData) -> bytes:
    """Field 62 for `card` under the data-encryption working key."""
    plaintext = (card.tid + f"{len(card.pan):02d}" + card.pan + card.expiry).encode("ascii")
    return aes_cbc_encrypt(key, pad_method2(plaintext))


def _parse_plaintext(plaintext: bytes) -> CardData | None:
    """The card block in `plaintext`, or None when it is not one."""
    if not plaintext.isascii() or len(plaintext) < TID_BYTES + 2:
        return None
    text = plaintext.decode("ascii")  # cannot fail: checked ASCII above
    pan_length_text = text[TID_BYTES : TID_BYTES + 2]
    if not _is_digits(pan_length_text):
        return None
    pan_start = TID_BYTES + 2
    pan_end = pan_start + int(pan_length_text)
    if len(text) != pan_end + 4:  # PANLEN must account for exactly the bytes before EXPIRY
        return None
    tid, pan, expiry = text[:TID_BYTES], text[pan_start:pan_end], text[pan_end:]
    if _card_data_problem(tid, pan, expiry) is not None:
        return None
    return CardData(tid, pan, expiry)


def decrypt_card_data(key: bytes, blob: bytes) -> CardData:
    """Decrypt and parse field 62; any failure is `SecurityError("bad_padding")`."""
    if not blob or len(blob) % BLOCK_BYTES or len(blob) > BLOB_BYTES_MAX:
        raise SecurityError("bad_padding")
    plaintext = unpad_method2(aes_cbc_decrypt(key, blob))
    card = None if plaintext is None else _parse_plaintext(plaintext)
    if card is None:
        raise SecurityError("bad_padding")
    return card
