"""`hj212gw check`: decode packets given on the command line, stdin or a file, and explain them.

Every field is printed with the standard's Chinese and English name, factor names and units come
from protocol/factors.py, and a reject says exactly what is wrong. `--json` prints one object per
packet. Exit status: 0 all valid, 1 any invalid, 2 usage. cli/__init__.py wires `build_parser`/`main`.
"""

import argparse
import json
import re
import sys
from collections.abc import Iterable
from typing import Any

from hj212gw.protocol import cp
from hj212gw.protocol.constants import PacketFlag
from hj212gw.protocol.crc import crc16_modbus, swap_bytes
from hj212gw.protocol.decoder import CrcPolicy, decode_frame
from hj212gw.protocol.errors import Hj212Error
from hj212gw.protocol.factors import factor_for
from hj212gw.protocol.framing import Frame, iter_frames
from hj212gw.protocol.models import Packet
from hj212gw.protocol.names import CN_NAMES, DATA_FLAG_NAMES, EXE_RTN_NAMES, FIELD_NAMES, QN_RTN_NAMES, ST_NAMES

# A packet pasted from a spec or a chat message often ends in the four characters `\r\n`.
LITERAL_CRLF = b"\\r\\n"
# What each CP model holds, in the words of the standard rather than the class names of protocol/cp.py.
CP_KINDS: dict[type[cp.CpData], str] = {
    cp.GenericCp: "items as sent (this CN has no fixed layout here)",
    cp.DataCp: "per-factor values",
    cp.HistoryRequestCp: "history request (BeginTime/EndTime)",
    cp.SiteInfoCp: "site information",
    cp.RestartCp: "restart time",
    cp.RequestReplyCp: "request reply (QnRtn)",
    cp.ExecutionResultCp: "execution result (ExeRtn)",
    cp.EmptyCp: "no parameters",
    cp.SystemTimeCp: "system time",
    cp.TimeoutsCp: "timeout and retry count (OverTime, ReCount)",
    cp.IntervalCp: "upload interval (RtdInterval or MinInterval)",
    cp.NewPasswordCp: "new access password",
    cp.PolIdCommandCp: "command to one instrument (PolId)",
    cp.HardwareSerialCp: "hardware serial numbers",
    cp.SetMnCp: "MN assignment",
    cp.KeyExchangeCp: "SM4 key exchange",
}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The `check` arguments, on `parser` (a sub-parser) or a new parser."""
    parser = parser or argparse.ArgumentParser(prog="hj212gw check", description=__doc__.splitlines()[0])
    parser.add_argument("packet", nargs="?", help="one packet; '-' or nothing reads stdin")
    parser.add_argument("--file", help="a file with one frame per line")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--crc", choices=("strict", "lenient"), default="strict", help="CRC policy")
    parser.add_argument("--allow-modbus", action="store_true", help="accept the MODBUS CRC variants")
    parser.add_argument("--key", action="append", default=[], help="SM4 key MN=16CHARS (repeatable)")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return 0 if exit_.code == 0 else 2
    try:
        keys = _parse_keys(args.key)
    except ValueError as exc:
        print(f"hj212gw check: {exc}", file=sys.stderr)
        return 2
    if args.file and args.packet:
        print("hj212gw check: give a packet or --file, not both", file=sys.stderr)
        return 2
    try:
        lines = _inputs(args.file, args.packet)
    except OSError as exc:
        print(f"hj212gw check: {exc}", file=sys.stderr)
        return 2
    if not lines:
        print("hj212gw check: no packet given", file=sys.stderr)
        return 2
    variants = frozenset({"modbus", "modbus_swapped"}) if args.allow_modbus else frozenset()
    policy = CrcPolicy(mode=args.crc, allowed_variants=variants)
    reports = [check_packet(line, policy, keys) for line in lines]
    for report in reports:
        print(json.dumps(report, ensure_ascii=False) if args.json else render(report))
    return 0 if all(r["valid"] for r in reports) else 1


def _parse_keys(items: Iterable[str]) -> dict[str, list[bytes]]:
    keys: dict[str, list[bytes]] = {}
    for item in items:
        mn, eq, key = item.partition("=")
        if not eq or len(key.encode()) != 16:
            raise ValueError(f"--key {item!r}: expected MN=<16 characters>")
        keys.setdefault(mn, []).append(key.encode())
    return keys


def _inputs(path: str | None, packet: str | None) -> list[bytes]:
    if path:
        with open(path, "rb") as handle:
            data = handle.read()
        return [line + b"\n" for line in data.split(b"\n") if line.strip()]
    if packet and packet != "-":
        return [packet.encode("utf-8")]
    data = sys.stdin.buffer.read()
    return [line + b"\n" for line in data.split(b"\n") if line.strip()]


def check_packet(wire: bytes, policy: CrcPolicy, keys: dict[str, list[bytes]]) -> dict[str, Any]:
    """Everything `check` knows about one packet, as a JSON-ready dict."""
    shown = re.sub(r"PW=([^;]*)", lambda m: f"PW={_mask(m.group(1))}", wire.decode("utf-8", "replace"))
    report: dict[str, Any] = {"input": shown, "notes": [], "valid": False}
    body = wire.rstrip(b"\r\n")
    if body.endswith(LITERAL_CRLF):
        report["notes"].append("the text \\r\\n at the end was read as the CR LF it stands for")
        body = body.removesuffix(LITERAL_CRLF)
    elif wire != body + b"\r\n":
        report["notes"].append("line did not end in CR LF: CR LF appended for framing")
    wire = body + b"\r\n"
    errors: list[Hj212Error] = []
    frame: Frame | None = None
    for found in iter_frames(wire):
        if isinstance(found, Frame):
            frame = found
            break
        errors.append(found)
    if frame is None:
        report["errors"] = [_error(e) for e in errors] or [{"reason": "no_frame", "detail": "no `##` frame found"}]
        return report
    report["errors"] = [_error(e) for e in errors]
    report["frame"] = _frame(frame)
    try:
        packet = decode_frame(frame, policy, keys)
    except Hj212Error as error:
        report["errors"].append(_error(error))
        return report
    report["packet"] = _packet(packet)
    report["valid"] = True
    return report


def _error(error: Hj212Error) -> dict[str, Any]:
    return {"reason": error.reason, "detail": str(error), "qn_rtn": int(error.qn_rtn)}


def _frame(frame: Frame) -> dict[str, Any]:
    modbus = crc16_modbus(frame.segment)
    return {
        "declared_length": frame.declared_length,
        "segment_bytes": len(frame.segment),
        "length_ok": frame.declared_length == len(frame.segment),
        "crc_declared": frame.crc_text.decode("ascii", "replace"),
        "crc_expected": f"{frame.computed_crc:04X}",
        "crc_modbus": f"{modbus:04X}",
        "crc_modbus_swapped": f"{swap_bytes(modbus):04X}",
        "crc_verdict": frame.crc_verdict.value,
        "tail": frame.tail.decode("ascii", "replace"),
        "injected": frame.injected.decode("ascii", "replace"),
        "tolerances": list(frame.tolerances),
    }


def _flag_bits(flag: int | None) -> dict[str, Any]:
    if flag is None:
        return {"value": None, "version": "2005 (no Flag)", "ack_requested": False, "split": False}
    return {
        "value": flag,
        "version_bits": (flag >> 2) & 0x3F,
        "ack_requested": bool(flag & PacketFlag.ACK_REQUESTED),
        "split": bool(flag & PacketFlag.SPLIT),
    }


def _packet(packet: Packet) -> dict[str, Any]:
    data = packet.data
    readings = []
    for reading in getattr(data, "readings", ()) or ():
        factor = factor_for(reading.code)
        flag = reading.flag
        readings.append(
            {
                "code": reading.code,
                "code_2017": reading.code_2017,
                "name_zh": factor.name_zh if factor else None,
                "name_en": factor.name_en if factor else None,
                "unit": factor.unit if factor else None,
                "values": reading.values,
                "flag_meaning": DATA_FLAG_NAMES.get(flag)[1] if flag in DATA_FLAG_NAMES else None,  # type: ignore[index]
            }
        )
    out: dict[str, Any] = {
        "fields": dict(packet.fields),
        "qn": packet.qn,
        "st": packet.st,
        "st_name": ST_NAMES.get(packet.st or ""),
        "cn": packet.cn,
        "cn_name": CN_NAMES.get(packet.cn),
        "pw_masked": _mask(packet.pw),
        "mn": packet.mn,
        "flag": _flag_bits(packet.flag),
        "version": packet.version.label,
        "pnum": packet.pnum,
        "pno": packet.pno,
        "rf": packet.rf,
        "encrypted": packet.encrypted,
        "tolerances": list(packet.tolerances),
        "cp_kind": CP_KINDS.get(type(data), "items") if data is not None else None,
        "data_time": data.get("DataTime") if data is not None else None,
        "items": [list(item) for item in data.items] if data is not None else [],
        "readings": readings,
    }
    qn_rtn, exe_rtn = getattr(data, "qn_rtn", None), getattr(data, "exe_rtn", None)
    if qn_rtn is not None:
        out["qn_rtn"] = [qn_rtn, QN_RTN_NAMES.get(qn_rtn, "?")]
    if exe_rtn is not None:
        out["exe_rtn"] = [exe_rtn, EXE_RTN_NAMES.get(exe_rtn, "?")]
    out["fields"].pop("PW", None)
    return out


def _mask(pw: str | None) -> str | None:
    if pw is None:
        return None
    return pw[:1] + "*" * max(0, len(pw) - 2) + pw[-1:] if len(pw) > 2 else "*" * len(pw)


def _name(key: str) -> str:
    zh, en = FIELD_NAMES.get(key, ("", ""))
    return f"{key} {zh} ({en})"


def render(report: dict[str, Any]) -> str:
    """The human-readable report of `check_packet`."""
    lines = [("VALID" if report["valid"] else "INVALID") + ": " + report["input"].rstrip("\r\n")[:120]]
    lines += [f"  note: {note}" for note in report["notes"]]
    frame = report.get("frame")
    if frame:
        verdict = "matches" if frame["length_ok"] else "DOES NOT match"
        lines.append(
            f"  length: declared {frame['declared_length']}, segment {frame['segment_bytes']} bytes ({verdict})"
        )
        lines.append(
            f"  CRC: declared {frame['crc_declared']}, HJ 212 gives {frame['crc_expected']}, "
            f"MODBUS {frame['crc_modbus']} / swapped {frame['crc_modbus_swapped']} -> {frame['crc_verdict']}"
        )
        if frame["injected"]:
            lines.append(f"  injected bytes (DTU keep-alive): {frame['injected']!r}")
    packet = report.get("packet")
    if packet:
        lines += _render_packet(packet)
    for error in report["errors"]:
        lines.append(f"  REJECTED {error['reason']}: {error['detail']} (9011 QnRtn {error['qn_rtn']})")
    return "\n".join(lines)


def _render_packet(packet: dict[str, Any]) -> list[str]:
    lines = []
    st_name = packet["st_name"] or ("?", "unknown system")
    cn_name = packet["cn_name"] or ("?", "unknown command")
    flag = packet["flag"]
    lines.append(f"  {_name('QN')}: {packet['qn']}")
    lines.append(f"  {_name('ST')}: {packet['st']} {st_name[0]} ({st_name[1]})")
    lines.append(f"  {_name('CN')}: {packet['cn']} {cn_name[0]} ({cn_name[1]})")
    lines.append(f"  {_name('PW')}: {packet['pw_masked']}")
    lines.append(f"  {_name('MN')}: {packet['mn']}")
    ack = "reply required" if flag["ack_requested"] else "no reply"
    split = "split (PNUM/PNO present)" if flag["split"] else "not split"
    lines.append(f"  {_name('Flag')}: {flag['value']} = version {packet['version']}, {ack}, {split}")
    if packet["pnum"] is not None or packet["pno"] is not None:
        lines.append(f"  {_name('PNUM')}/{_name('PNO')}: {packet['pnum']}/{packet['pno']}")
    lines.append(f"  {_name('RF')}: {'1 (backfill)' if packet['rf'] else 'absent/0 (live)'}")
    if packet["encrypted"]:
        lines.append("  CP was SM4-encrypted and decrypted")
    lines.append(f"  {_name('CP')}: {packet['cp_kind']}, DataTime {packet['data_time']}")
    for reading in packet["readings"]:
        name = (
            f"{reading['name_zh']} {reading['name_en']} [{reading['unit']}]" if reading["name_zh"] else "unknown factor"
        )
        values = ", ".join(f"{k}={v}" for k, v in reading["values"].items())
        meaning = f" (flag: {reading['flag_meaning']})" if reading["flag_meaning"] else ""
        lines.append(f"    {reading['code']} {name}: {values}{meaning}")
    if not packet["readings"]:
        lines += [f"    {name}={value}" for name, value in packet["items"]]
    for key in ("qn_rtn", "exe_rtn"):
        if key in packet:
            lines.append(f"  {key}: {packet[key][0]} ({packet[key][1]})")
    lines += [f"  tolerance: {t}" for t in packet["tolerances"]]
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
