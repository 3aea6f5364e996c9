"""check.py: `hj212gw check` decodes, explains and exits 0 valid / 1 invalid / 2 usage."""

import io
import json
import re
from pathlib import Path

import pytest

from hj212gw.cli.check import main
from tests.protocol.conftest import BAD, FIRST, GOOD, SM4, fixture_id

STD = FIRST.parent


def text(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def test_standard_example_is_valid_and_every_field_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([text(FIRST)]) == 0
    out = capsys.readouterr().out
    for needle in (
        "VALID",
        "QN 请求编码",
        "ST 系统编码 (system code): 32 地表水体环境污染源",
        "CN 命令编码 (command code): 1062 设置实时数据间隔",
        "PW 访问密码 (access password): 1****0",
        "MN 设备唯一标识",
        "5 = version 2017, reply required, not split",
        "declared 1C80, HJ 212 gives 1C80",
        "declared 101, segment 101 bytes (matches)",
        "RtdInterval=30",
    ):
        assert needle in out, needle
    assert "100000" not in out  # the password is masked everywhere, the echoed input too


def test_readings_get_factor_names_units_and_flag_meanings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([text(STD / "2011-e5-realtime-data.hj212")]) == 0
    out = capsys.readouterr().out
    assert "w01018 化学需氧量 COD [毫克/升]" in out
    assert "Flag=M (flag: maintenance)" in out


def test_crc_mismatch_says_expected_and_declared(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([text(FIRST).replace("1C80", "1C08")]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "declared 1C08, HJ 212 gives 1C80" in out
    assert "REJECTED crc_mismatch" in out and "QnRtn 9" in out


def test_missing_crlf_is_appended_and_said(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([text(FIRST).rstrip()]) == 0
    assert "CR LF appended" in capsys.readouterr().out


@pytest.mark.parametrize("path", GOOD[:60:3] + BAD[::5], ids=fixture_id)
def test_json_verdict_agrees_with_the_fixture(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--json", text(path)])
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is (path in GOOD) and code == (0 if path in GOOD else 1)
    if path in BAD:
        assert path.name.startswith(report["errors"][-1]["reason"] + "-")
    else:
        assert report["packet"]["cn"] == path.stem.split("-")[0]
        assert "PW" not in report["packet"]["fields"]


def test_file_with_one_frame_per_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listing = tmp_path / "frames.txt"
    listing.write_bytes(FIRST.read_bytes() + b"\n" + (STD / "2051-e1-minute-data.hj212").read_bytes())
    assert main(["--json", "--file", str(listing)]) == 0
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["packet"]["cn"] for r in reports] == ["1062", "2051"]
    listing.write_bytes(FIRST.read_bytes() + BAD[0].read_bytes())
    assert main(["--file", str(listing)]) == 1


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(FIRST.read_bytes())))
    assert main([]) == 0
    assert "VALID" in capsys.readouterr().out


def test_modbus_and_lenient_options(capsys: pytest.CaptureFixture[str]) -> None:
    variant = next(p for p in BAD if p.name.startswith("crc_variant-"))
    assert main([text(variant)]) == 1
    assert main(["--allow-modbus", text(variant)]) == 0
    assert "crc_modbus" in capsys.readouterr().out
    assert main(["--crc", "lenient", text(FIRST).replace("1C80", "0000")]) == 0


def test_sm4_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([text(SM4[0])]) == 1
    assert main(["--key", "010000A8900016F000169DC0=0000000000000000", text(SM4[0])]) == 0
    assert "SM4-encrypted" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [["--nope"], ["--key", "bad", "x"], ["--file", "/nonexistent/frames.txt"], ["a", "--file", "b"]]
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2


def test_no_frame_at_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hello"]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_a_packet_pasted_with_a_literal_crlf_text_is_accepted_and_said(capsys: pytest.CaptureFixture[str]) -> None:
    pasted = text(FIRST).rstrip("\r\n") + "\\r\\n"
    assert main([pasted]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and "the text \\r\\n at the end was read as the CR LF" in out
    assert "CR LF appended" not in out


@pytest.mark.parametrize("path", GOOD[::4], ids=fixture_id)
def test_no_internal_class_name_is_printed(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([text(path)])
    main(["--json", text(path)])
    out = capsys.readouterr().out
    assert not re.search(r"[A-Z][A-Za-z]*Cp\b|model ", out), out
    assert "CP 指令参数 (command parameters): " in out
