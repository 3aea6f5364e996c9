"""How a simulated DAS answers the platform (HJ 212-2017 §9; C.20-C.22, C.47-C.50).

9014 and 9013 are matched to what the device sent by QN. Requests get 9011 (QnRtn), then any
response or data packets, then 9012 (ExeRtn): 1000, 1011/1012, 1061-1064, 1072, 2011/2021 and
the history fetches 2031/2051/2061 (each data packet with a new QN, each waiting for its 9014;
ExeRtn=100 when nothing was recorded in the range). 2012/2022 are notifications answered with
9013. Replies are built by `protocol.builders`, in the version of the request.
"""

from datetime import datetime

from hj212gw.protocol.builders import build_execution_result, build_notification_reply, build_request_reply
from hj212gw.protocol.constants import Cn, ExeRtn, QnRtn
from hj212gw.protocol.cp import HistoryRequestCp, IntervalCp, NewPasswordCp, SystemTimeCp, TimeoutsCp
from hj212gw.protocol.framing import encode_frame
from hj212gw.protocol.models import Packet, format_hj_time, parse_hj_time
from hj212gw.simulator.config import MIN_INTERVALS
from hj212gw.simulator.device import PERIOD_CNS, SimDevice

_SETTERS = frozenset({"1000", "1012", "1062", "1064", "1072"})
_GETTERS = frozenset({"1011", "1061", "1063"})
_CONTROLS = frozenset({"3011", "3012", "3013", "3014", "3022", "3024"})


def _qn_of(packet: Packet) -> str | None:
    """The QN a reply answers: in the header, or inside CP on 2005 replies (§14)."""
    return packet.qn or getattr(packet.data, "qn", None)


def handle_packet(device: SimDevice, packet: Packet, sim: datetime, now_s: float) -> None:
    cn = packet.cn
    if cn in (Cn.DATA_REPLY, Cn.NOTIFICATION_REPLY):
        qn = _qn_of(packet)
        if qn is not None and qn == device.heartbeat_qn:
            device.heartbeat_qn = None
            device.counters.heartbeats_answered += 1  # a platform may answer a heartbeat with 9013 or 9014
        elif qn is not None and cn == Cn.DATA_REPLY:
            device.delivery.acknowledge(qn, now_s)
        return
    if cn in (Cn.REQUEST_REPLY, Cn.EXECUTION_RESULT):
        return  # never reply to a reply
    lane = device.delivery.push_lane
    if packet.pw is not None and packet.pw != device.pw:
        lane(build_request_reply(packet, QnRtn.PW_ERROR))
        return
    if packet.mn is not None and packet.mn != device.spec.mn:
        lane(build_request_reply(packet, QnRtn.MN_ERROR))
        return
    device.counters.commands += 1
    if cn in (Cn.STOP_REALTIME_DATA, Cn.STOP_RUNNING_STATE):
        device.uploads.discard(Cn.REALTIME_DATA if cn == Cn.STOP_REALTIME_DATA else Cn.RUNNING_STATE)
        lane(build_notification_reply(packet))
        return
    if cn in PERIOD_CNS and isinstance(packet.data, HistoryRequestCp):
        _answer_history(device, packet, sim)
        return
    if cn in (Cn.REALTIME_DATA, Cn.RUNNING_STATE):
        device.uploads.add(cn)
        _accept(device, packet, ExeRtn.SUCCESS)
        return
    if cn in _SETTERS:
        _accept(device, packet, _apply_setting(device, packet, sim))
        return
    if cn in _GETTERS:
        _answer_get(device, packet, sim)
        return
    if cn in _CONTROLS:
        _accept(device, packet, ExeRtn.SUCCESS)
        return
    device.counters.commands -= 1
    if packet.ack_requested:
        lane(build_request_reply(packet, QnRtn.CN_ERROR))


def _accept(device: SimDevice, packet: Packet, result: ExeRtn) -> None:
    device.delivery.push_lane(build_request_reply(packet, QnRtn.READY))
    device.delivery.push_lane(build_execution_result(packet, result))


def _apply_setting(device: SimDevice, packet: Packet, sim: datetime) -> ExeRtn:
    data = packet.data
    match packet.cn:
        case "1012" if isinstance(data, SystemTimeCp) and data.system_time:
            moment = parse_hj_time(data.system_time)
            if moment is None:
                return ExeRtn.BAD_CONDITIONS
            device.set_clock(sim, moment)
        case "1062" if isinstance(data, IntervalCp) and data.rtd_interval is not None:
            if not 30 <= data.rtd_interval <= 3600:
                return ExeRtn.BAD_CONDITIONS
            device.rtd_interval_s = data.rtd_interval
        case "1064" if isinstance(data, IntervalCp) and data.min_interval is not None:
            if data.min_interval not in MIN_INTERVALS:
                return ExeRtn.BAD_CONDITIONS
            device.min_interval_min = data.min_interval
            device.reschedule_minutes()
        case "1000" if isinstance(data, TimeoutsCp):
            if data.over_time:
                device.delivery.over_time_s = float(data.over_time)
            if data.re_count:
                device.delivery.re_count = data.re_count
        case "1072" if isinstance(data, NewPasswordCp) and data.new_pw:
            device.pw = data.new_pw
        case _:
            return ExeRtn.BAD_CONDITIONS
    return ExeRtn.SUCCESS


def _answer_get(device: SimDevice, packet: Packet, sim: datetime) -> None:
    """1011/1061/1063: 9011, a response with the request's CN and QN (Flag without ack), 9012."""
    match packet.cn:
        case "1011":
            cp = f"SystemTime={format_hj_time(device.local(sim))}"
        case "1061":
            cp = f"RtdInterval={device.rtd_interval_s}"
        case _:
            cp = f"MinInterval={device.min_interval_min}"
    lane = device.delivery.push_lane
    lane(build_request_reply(packet, QnRtn.READY))
    lane(encode_frame(device.segment(packet.qn or device.new_qn(sim), packet.cn, cp, ack=False)))
    lane(build_execution_result(packet, ExeRtn.SUCCESS))


def _answer_history(device: SimDevice, packet: Packet, sim: datetime) -> None:
    """§9.2: 9011 QnRtn=1, one packet per recorded period (new QNs), 9012 ExeRtn=1 or 100."""
    data = packet.data
    assert isinstance(data, HistoryRequestCp)
    begin = parse_hj_time(data.begin_time or "")
    end = parse_hj_time(data.end_time or "")
    lane = device.delivery.push_lane
    if begin is None or end is None or end < begin:
        lane(build_request_reply(packet, QnRtn.REJECTED))
        return
    device.counters.history_requests += 1
    lane(build_request_reply(packet, QnRtn.READY))
    periods = device.history_range(packet.cn, begin, end)
    for start, step in periods:
        for item in device.period_packets(packet.cn, start, step, history=True):
            lane(item)
    lane(build_execution_result(packet, ExeRtn.SUCCESS if periods else ExeRtn.NO_DATA))
