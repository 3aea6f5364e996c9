"""SM4 encryption of the CP content (HJ 212-2025 §6.4, Appendix A.2).

SM4-ECB with a 16-byte key over the whole 16-byte blocks of the CP content; a remainder shorter
than 16 bytes stays plaintext ("Nopadding"). The packet's length and CRC are those of the
plaintext, so a key is right only if the plaintext parses and its CRC matches. The ciphertext
travels either as raw bytes in place or as the printed `{0xE4,0x3E,…}` text; both are read.
"""

import re
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hj212gw.protocol.errors import DecryptFailed

BLOCK_BYTES: Final = 16
_TEXT_FORM = re.compile(rb"^\{((?:0x[0-9A-Fa-f]{2},)*0x[0-9A-Fa-f]{2})\}")


def _check_key(key: bytes) -> None:
    if len(key) != BLOCK_BYTES:
        raise DecryptFailed(f"an SM4 key has 16 bytes, this one {len(key)}")


def encrypt_cp(content: bytes, key: bytes) -> bytes:
    """Raw ciphertext of the whole blocks of `content`, followed by the plaintext tail."""
    _check_key(key)
    whole = len(content) // BLOCK_BYTES * BLOCK_BYTES
    encryptor = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    return encryptor.update(content[:whole]) + encryptor.finalize() + content[whole:]


def decrypt_cp(content: bytes, key: bytes) -> bytes:
    """Plaintext of raw-form CP content (whole blocks decrypted, the tail left as is)."""
    _check_key(key)
    whole = len(content) // BLOCK_BYTES * BLOCK_BYTES
    decryptor = Cipher(algorithms.SM4(key), modes.ECB()).decryptor()
    return decryptor.update(content[:whole]) + decryptor.finalize() + content[whole:]


def to_text_form(ciphertext_and_tail: bytes, cipher_bytes: int) -> bytes:
    """The printed form: `{0xE4,0x3E,…}` for the cipher bytes, then the plaintext tail."""
    cipher, tail = ciphertext_and_tail[:cipher_bytes], ciphertext_and_tail[cipher_bytes:]
    return b"{" + b",".join(b"0x%02X" % byte for byte in cipher) + b"}" + tail


def from_text_form(content: bytes) -> bytes | None:
    """Raw ciphertext + tail from the `{0x..,…}` form, or None if `content` is not in that form."""
    match = _TEXT_FORM.match(content)
    if match is None:
        return None
    cipher = bytes(int(token[2:], 16) for token in match.group(1).split(b","))
    if len(cipher) % BLOCK_BYTES:
        raise DecryptFailed(f"{len(cipher)} cipher bytes is not a whole number of SM4 blocks")
    return cipher + content[match.end() :]


def looks_encrypted(content: bytes) -> bool:
    """True if CP content cannot be `Key=value` text: the `{0x` form, or not printable UTF-8."""
    if content.startswith(b"{0x"):
        return True
    head = content[:BLOCK_BYTES]
    if b"=" in head and head.isascii() and all(32 <= byte < 127 for byte in head):
        return False
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return not text[:BLOCK_BYTES].isprintable()
