"""crypto.py and the SM4 path of the decoder (HJ 212-2025 §6.4, Appendix A.2)."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hj212gw.protocol.crypto import decrypt_cp, encrypt_cp, from_text_form, looks_encrypted, to_text_form
from hj212gw.protocol.decoder import decode_frame
from hj212gw.protocol.errors import CrcMismatch, CrcMismatchAfterDecrypt, DecryptFailed
from hj212gw.protocol.framing import Tolerance, parse_frame
from hj212gw.protocol.models import Packet
from hj212gw.protocol.packets import parse_packet
from hj212gw.protocol.segment import parse_segment
from tests.protocol.conftest import FIXTURES, SM4, expected, fixture_id

MN = "010000A8900016F000169DC0"
KEY = b"0000000000000000"
OTHER = b"1234567890abcdef"


def raw_form(wire: bytes) -> bytes:
    """The same packet with the ciphertext as raw bytes in place of the printed `{0x..}` text."""
    start = wire.index(b"CP=&&") + 5
    end = wire.rindex(b"&&")
    raw = from_text_form(wire[start:end])
    assert raw is not None
    return wire[:start] + raw + wire[end:]


def plaintext_of(path: Path) -> Packet:
    plain = (FIXTURES / "packets" / expected(path)["plaintext_fixture"]).read_bytes()
    return parse_segment(plain[6:-6])


def test_two_sm4_fixtures() -> None:
    assert [p.stem for p in SM4] == ["2051-a2-example1-encrypted", "2051-a2-example2-encrypted"]
    assert all(expected(p)["key"] == KEY.decode() for p in SM4)


@pytest.mark.parametrize("path", SM4, ids=fixture_id)
def test_text_form_decrypts_to_the_plaintext_fixture(path: Path) -> None:
    packet = parse_packet(path.read_bytes(), keys={MN: [KEY]})
    assert packet.encrypted
    assert Tolerance.SM4_TEXT_FORM in packet.tolerances
    want = plaintext_of(path)
    assert packet.cp == want.cp and packet.fields == want.fields
    assert packet.data == want.data


@pytest.mark.parametrize("path", SM4, ids=fixture_id)
def test_raw_form_decrypts_with_no_length_mismatch(path: Path) -> None:
    wire = raw_form(path.read_bytes())
    frame = parse_frame(wire)
    assert frame.raw == wire
    packet = decode_frame(frame, keys={MN: [KEY]})
    assert packet.cp == plaintext_of(path).cp
    assert Tolerance.SM4_TEXT_FORM not in packet.tolerances
    assert Tolerance.LENGTH_MISMATCH not in packet.tolerances


@pytest.mark.parametrize("path", SM4, ids=fixture_id)
def test_wrong_key_is_crc_mismatch_after_decrypt(path: Path) -> None:
    with pytest.raises(CrcMismatchAfterDecrypt) as caught:
        parse_packet(path.read_bytes(), keys={MN: [OTHER]})
    assert caught.value.reason == "crc_mismatch_after_decrypt" and caught.value.keys_tried == 1


@pytest.mark.parametrize("path", SM4, ids=fixture_id)
def test_previous_key_is_accepted_and_labelled(path: Path) -> None:
    packet = parse_packet(path.read_bytes(), keys={MN: [OTHER, KEY]})
    assert Tolerance.SM4_PREVIOUS_KEY in packet.tolerances
    assert packet.cp == plaintext_of(path).cp


@pytest.mark.parametrize("path", SM4, ids=fixture_id)
def test_without_a_key_the_frame_is_a_crc_mismatch(path: Path) -> None:
    with pytest.raises(CrcMismatch):
        parse_packet(path.read_bytes())
    with pytest.raises(CrcMismatch):
        parse_packet(path.read_bytes(), keys={"SOMEONE-ELSE": [KEY]})


def test_example2_keeps_its_plaintext_tail() -> None:
    wire = SM4[1].read_bytes()
    assert wire.split(b"}")[1].startswith(b"g=N&&")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.binary(min_size=16, max_size=16))
def test_encrypt_then_decrypt_is_identity(content: bytes, key: bytes) -> None:
    cipher = encrypt_cp(content, key)
    assert len(cipher) == len(content)
    assert decrypt_cp(cipher, key) == content
    whole = len(content) // 16 * 16
    assert from_text_form(to_text_form(cipher, whole)) == cipher or whole == 0


def test_bad_keys_and_partial_blocks() -> None:
    with pytest.raises(DecryptFailed):
        decrypt_cp(b"x" * 16, b"short")
    with pytest.raises(DecryptFailed):
        from_text_form(b"{0x01,0x02}rest")


def test_looks_encrypted() -> None:
    assert looks_encrypted(b"{0xE4,0x3E}")
    assert not looks_encrypted(b"DataTime=20240101000000;a-Rtd=1")
    assert looks_encrypted(encrypt_cp(b"DataTime=20240101000000;a-Rtd=1", KEY))
