"""server/auth.py: the per-IP wrong-PW backoff (pure, time passed in) and the SM4 keys of serve."""

from pathlib import Path

import pytest

from hj212gw.server.auth import Sm4KeysError, WrongPwBackoff, load_sm4_keys, parse_sm4_key
from hj212gw.settings import DeviceSettings


def test_each_failure_doubles_the_wait_up_to_the_maximum() -> None:
    backoff = WrongPwBackoff(base_s=1.0, max_s=8.0)
    assert backoff.wait_s("10.0.0.1", now=0.0) == 0.0
    delays = [backoff.failed("10.0.0.1", now=float(n)) for n in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.wait_s("10.0.0.1", now=6.0) == 7.0  # blocked until 5 + 8
    assert backoff.wait_s("10.0.0.2", now=6.0) == 0.0  # other addresses are not affected


def test_an_ip_quiet_for_the_maximum_after_its_block_starts_over() -> None:
    backoff = WrongPwBackoff(base_s=1.0, max_s=8.0)
    for n in range(4):
        backoff.failed("10.0.0.1", now=float(n))  # blocked until 3 + 8 = 11
    assert backoff.wait_s("10.0.0.1", now=18.9) == 0.0
    assert backoff.failed("10.0.0.1", now=18.9) == 8.0  # still remembered: within 11 + 8
    assert backoff.wait_s("10.0.0.1", now=100.0) == 0.0
    assert len(backoff) == 0
    assert backoff.failed("10.0.0.1", now=100.0) == 1.0


def test_the_table_is_bounded_and_forgets_the_oldest_failure_first() -> None:
    backoff = WrongPwBackoff(base_s=1.0, max_s=60.0, max_ips=3)
    for n in range(3):
        backoff.failed(f"10.0.0.{n}", now=0.0)
    backoff.failed("10.0.0.0", now=1.0)  # the most recent failure again
    backoff.failed("10.0.0.9", now=2.0)
    assert len(backoff) == 3
    assert backoff.wait_s("10.0.0.1", now=2.0) == 0.0  # forgotten
    assert backoff.wait_s("10.0.0.0", now=2.0) > 0.0


def test_sm4_keys_are_32_hex_digits_or_16_characters() -> None:
    assert parse_sm4_key("M", "30" * 16) == b"0" * 16
    assert parse_sm4_key("M", "0000000000000000") == b"0" * 16
    for bad in ("", "short", "zz" * 16, "0" * 17, "é" * 16):
        with pytest.raises(Sm4KeysError, match="'M'") as err:
            parse_sm4_key("M", bad)
        assert bad not in str(err.value) or bad == ""


def test_keys_from_the_file_and_the_settings_the_settings_win(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text('MN1 = "0000000000000000"\nMN2 = ["' + "31" * 16 + '", "2222222222222222"]\n')
    settings = DeviceSettings(sm4_keys_file=keys_file, sm4_keys={"MN1": "3333333333333333"})
    assert load_sm4_keys(settings) == {"MN1": (b"3" * 16,), "MN2": (b"1" * 16, b"2" * 16)}


def test_a_broken_keys_file_is_named_without_its_content(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text('MN1 = "S3cretS3cretS3cr\n')  # unterminated string
    with pytest.raises(Sm4KeysError, match="not valid TOML") as err:
        load_sm4_keys(DeviceSettings(sm4_keys_file=keys_file))
    assert "S3cret" not in str(err.value)
    with pytest.raises(Sm4KeysError, match="No such file"):
        load_sm4_keys(DeviceSettings(sm4_keys_file=tmp_path / "missing.toml"))
    keys_file.write_text("MN1 = 12\n")
    with pytest.raises(Sm4KeysError, match="'MN1'"):
        load_sm4_keys(DeviceSettings(sm4_keys_file=keys_file))
