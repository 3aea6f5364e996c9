"""Builders for every reply and platform->DAS command, in the version the DAS speaks.

Replies (HJ 212-2017 §9.1) echo QN, PW and MN of the packet answered, with `ST=91` and the
reply Flag of the DAS's version: 0 for 2005, 4 for 2017, 8 for 2025; a 2005 reply carries the
answered QN inside CP (§14), whether the DAS sent it in the header or, the 2005 way, in CP.
Requests carry the site's ST, the DAS's PW, a fresh QN in the header and the version bits of
the DAS with the ack bit: Flag 1 for 2005, 5 for 2017, 9 for 2025.
"""

from dataclasses import dataclass

from hj212gw.protocol.constants import Cn, ExeRtn, PacketFlag, ProtocolVersion, QnRtn
from hj212gw.protocol.cp import Items, encode_items, tokenize_cp
from hj212gw.protocol.errors import Hj212Error
from hj212gw.protocol.framing import encode_frame
from hj212gw.protocol.models import Packet

_REPLY_FLAG = {
    ProtocolVersion.HJT212_2005: 0,
    ProtocolVersion.HJ212_2017: 4,
    ProtocolVersion.HJ212_2025: 8,
}


_DATA_REPLY = f"{Cn.DATA_REPLY}"  # the text build_reply writes for it


def version_bits(version: ProtocolVersion) -> int:
    return int(version) << 2


def _segment(fields: Items, cp: str) -> bytes:
    head = "".join(f"{name}={value};" for name, value in fields)
    return f"{head}CP=&&{cp}&&".encode()


def answered_qn(packet: Packet) -> str | None:
    """The QN a reply to `packet` echoes: the header's, else a 2005-style `QN=` item in CP."""
    if packet.qn is not None:
        return packet.qn
    if "QN=" not in packet.cp:
        return None  # the usual 2005 upload: no QN anywhere, so no tokenizing
    try:
        items = packet.data.items if packet.data is not None else tokenize_cp(packet.cp)
    except Hj212Error:
        return None  # a CP that does not tokenize has no QN to echo
    return next((value for name, value in items if name == "QN"), None)


def build_reply(answered: Packet, cn: str, cp_items: Items = ()) -> bytes:
    """A 9011/9012/9013/9014 frame answering `answered` in its version."""
    version = answered.version
    fields: list[tuple[str, str]] = []
    items = list(cp_items)
    qn = answered_qn(answered)
    if qn is not None:
        if version is ProtocolVersion.HJT212_2005:
            items.insert(0, ("QN", qn))
        else:
            fields.append(("QN", qn))
    fields.append(("ST", "91"))
    fields.append(("CN", cn))
    fields.append(("PW", answered.pw or ""))
    fields.append(("MN", answered.mn or ""))
    fields.append(("Flag", str(_REPLY_FLAG[version])))
    return encode_frame(_segment(tuple(fields), encode_items(tuple(items))))


def build_data_ack(packet: Packet) -> bytes:
    """9014 data reply: sent only after the packet's data is committed.

    One per data packet, so the usual 2017/2025 form is one format string; byte-identical to
    `build_reply(packet, Cn.DATA_REPLY)`, which the 2005 form (QN inside CP) still takes.
    """
    version = packet.version
    if packet.qn is None or version is ProtocolVersion.HJT212_2005:
        return build_reply(packet, Cn.DATA_REPLY)
    segment = f"QN={packet.qn};ST=91;CN={_DATA_REPLY};PW={packet.pw or ''};MN={packet.mn or ''};"
    return encode_frame(f"{segment}Flag={_REPLY_FLAG[version]};CP=&&&&".encode())


def build_notification_reply(packet: Packet) -> bytes:
    """9013 notification reply (1013, 1001, 1014, and the 9015 heartbeat)."""
    return build_reply(packet, Cn.NOTIFICATION_REPLY)


def build_request_reply(packet: Packet, qn_rtn: QnRtn) -> bytes:
    """9011 with QnRtn: the platform's answer to a request it received."""
    return build_reply(packet, Cn.REQUEST_REPLY, (("QnRtn", str(int(qn_rtn))),))


def build_execution_result(packet: Packet, exe_rtn: ExeRtn) -> bytes:
    """9012 with ExeRtn."""
    return build_reply(packet, Cn.EXECUTION_RESULT, (("ExeRtn", str(int(exe_rtn))),))


@dataclass(frozen=True, slots=True)
class Target:
    """Who a platform request goes to: the header values of that DAS."""

    mn: str
    pw: str
    st: str
    version: ProtocolVersion = ProtocolVersion.HJ212_2017


def build_request(target: Target, cn: str, qn: str, cp_items: Items = (), *, ack: bool = True) -> bytes:
    """A platform->DAS request frame: `QN;ST;CN;PW;MN;Flag;CP` with the ack bit (Flag 1 / 5 / 9)."""
    flag = version_bits(target.version) | (PacketFlag.ACK_REQUESTED if ack else 0)
    fields = (
        ("QN", qn),
        ("ST", target.st),
        ("CN", cn),
        ("PW", target.pw),
        ("MN", target.mn),
        ("Flag", str(int(flag))),
    )
    return encode_frame(_segment(fields, encode_items(cp_items)))


def build_set_time(target: Target, qn: str, system_time: str, pol_id: str | None = None) -> bytes:
    """1012: set the DAS (or instrument `pol_id`) clock to `system_time` (YYYYMMDDhhmmss)."""
    items = (("PolId", pol_id),) if pol_id else ()
    return build_request(target, Cn.SET_TIME, qn, (*items, ("SystemTime", system_time)))


def build_get_time(target: Target, qn: str, pol_id: str | None = None) -> bytes:
    """1011: ask for the DAS (or instrument) time."""
    return build_request(target, Cn.GET_TIME, qn, (("PolId", pol_id),) if pol_id else ())


def build_history_request(target: Target, cn: str, qn: str, begin_time: str, end_time: str) -> bytes:
    """2031/2041/2051/2061 (and 2025's 2013/2062): fetch history, both ends inclusive (§9.2)."""
    return build_request(target, cn, qn, (("BeginTime", begin_time), ("EndTime", end_time)))


def build_set_timeouts(target: Target, qn: str, over_time_s: int, re_count: int) -> bytes:
    """1000: OverTime (1-99 s) and ReCount (1-99)."""
    return build_request(target, Cn.SET_TIMEOUTS, qn, (("OverTime", str(over_time_s)), ("ReCount", str(re_count))))


def build_get_rtd_interval(target: Target, qn: str) -> bytes:
    return build_request(target, Cn.GET_RTD_INTERVAL, qn)


def build_set_rtd_interval(target: Target, qn: str, seconds: int) -> bytes:
    """1062: real-time upload interval, 30-3600 s."""
    return build_request(target, Cn.SET_RTD_INTERVAL, qn, (("RtdInterval", str(seconds)),))


def build_get_min_interval(target: Target, qn: str) -> bytes:
    return build_request(target, Cn.GET_MIN_INTERVAL, qn)


def build_set_min_interval(target: Target, qn: str, minutes: int) -> bytes:
    """1064: minute-data interval, one of 1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30."""
    return build_request(target, Cn.SET_MIN_INTERVAL, qn, (("MinInterval", str(minutes)),))


def build_set_password(target: Target, qn: str, new_pw: str) -> bytes:
    """1072: NewPW (six characters 0-9 a-z A-Z)."""
    return build_request(target, Cn.SET_PASSWORD, qn, (("NewPW", new_pw),))


def build_realtime(target: Target, qn: str, *, start: bool) -> bytes:
    """2011 starts real-time uploads; 2012 stops them (a notification the DAS answers with 9013)."""
    return build_request(target, Cn.REALTIME_DATA if start else Cn.STOP_REALTIME_DATA, qn)


def build_running_state(target: Target, qn: str, *, start: bool) -> bytes:
    """2021 starts running-state uploads; 2022 stops them."""
    return build_request(target, Cn.RUNNING_STATE if start else Cn.STOP_RUNNING_STATE, qn)


def build_control(target: Target, cn: str, qn: str, pol_id: str, **extra: str) -> bytes:
    """3011-3015 (and 2025's 3022/3024): a control command addressed to instrument `pol_id`.

    `extra` adds items such as `CalibrationType="0"` (3011, 2025) or `VaseNo="1"`.
    """
    return build_request(target, cn, qn, (("PolId", pol_id), *extra.items()))


def build_new_key(target: Target, qn: str, sk_create_time: str, new_sk: str) -> bytes:
    """2025 CN 1014: the platform sends a new SM4 key (16 characters)."""
    return build_request(target, Cn.KEY_EXCHANGE, qn, (("SKCreateTime", sk_create_time), ("NewSK", new_sk)))
