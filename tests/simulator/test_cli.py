"""The whole simulator over real sockets against the reference receiver."""

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from hj212gw.cli import main as hj212gw_main
from hj212gw.simulator.cli import main, parse_scenario_flag, run_simulation
from hj212gw.simulator.clock import parse_start
from hj212gw.simulator.config import SimConfig, make_mn
from hj212gw.simulator.scenarios import Scenario, parse_scenario
from tests.simulator.receiver import ReferenceReceiver

START = "2024-03-15T00:00:00+08:00"


def _config(receiver: ReferenceReceiver, **kw: object) -> SimConfig:
    port = receiver.server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base: dict[str, object] = {
        "target": f"127.0.0.1:{port}", "start": START, "min_interval_min": 1, "uploads": ("2051", "2061"),
        "drain_s": 30.0, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5,  # the drain ends once all is acked
    }  # fmt: skip
    base.update(kw)
    return SimConfig(**base)  # type: ignore[arg-type]


def _minutes(receiver: ReferenceReceiver, mn: str) -> list[str]:
    return sorted({r.packet.data.data_time for r in receiver.received if r.acked and r.packet.mn == mn
                   and r.packet.cn == "2051"})  # fmt: skip


def _expected_minutes(count: int) -> list[str]:
    first = datetime(2024, 3, 15)
    return [(first + timedelta(minutes=m)).strftime("%Y%m%d%H%M%S") for m in range(count)]


async def test_every_acked_packet_is_recorded(receiver: ReferenceReceiver) -> None:
    config = _config(receiver, count=6, speed=600, duration_s=2.0, versions={"2017": 0.5, "2025": 0.3, "2005": 0.2})
    summary = await run_simulation(config)
    acked_by_receiver = sum(r.acked for r in receiver.received)
    assert summary.acked == acked_by_receiver > 6 * 15
    assert summary.unacked == 0 and receiver.rejected == 0
    assert {r.packet.version.label for r in receiver.received} == {"2005", "2017", "2025"}


async def test_network_cut_is_followed_by_reupload_without_loss_or_duplicates(receiver: ReferenceReceiver) -> None:
    cut = Scenario("cut", devices=(0, 1), start_s=600, duration_s=1200)
    config = _config(receiver, count=4, speed=1200, sim_duration_s=3600, versions={"2017": 0.5, "2025": 0.5},
                     scenarios=(cut,))  # fmt: skip
    summary = await run_simulation(config)
    assert summary.reconnects >= 2 and summary.reuploaded > 0 and summary.unacked == 0
    minutes_done = int(summary.sim_duration_s // 60) - 1
    for index in range(4):
        got = _minutes(receiver, make_mn(1, index))
        assert got[:minutes_done] == _expected_minutes(minutes_done), index
    acked = Counter(receiver.acked_keys())
    duplicates = sum(n - 1 for n in acked.values())
    assert duplicates <= 2 * config.window  # only packets whose 9014 was lost in the cut


async def test_2025_reuploads_carry_rf_and_live_data_does_not(receiver: ReferenceReceiver) -> None:
    cut = Scenario("cut", devices=(0,), start_s=300, duration_s=600)
    config = _config(receiver, count=1, speed=1200, sim_duration_s=1800, versions={"2025": 1.0}, scenarios=(cut,))
    await run_simulation(config)
    minutes = [p for p in receiver.packets(cn="2051")]
    late = [p for p in minutes if "20240315000500" <= p.data.data_time < "20240315001400"]
    live = [p for p in minutes if p.data.data_time < "20240315000400"]
    assert late and all(p.rf and p.header("RF") == "1" for p in late)
    assert live and not any(p.rf for p in live)


async def test_history_request_is_answered_over_the_socket(receiver: ReferenceReceiver) -> None:
    config = _config(receiver, count=1, speed=3600, duration_s=2.5, uploads=("2061",), versions={"2017": 1.0})
    task = asyncio.create_task(run_simulation(config))
    while not receiver.packets(cn="2061") and not task.done():
        await asyncio.sleep(0.05)
    first = receiver.packets(cn="2061")[0]
    receiver.request_history(first, "2061", "20240315020000000", "20240315000000", "20240315000000")
    receiver.request_history(first, "2061", "20240315020000001", "20230101000000", "20230101010000")
    summary = await task
    replies = [(p.cn, p.qn, p.cp) for p in receiver.received_packets() if p.cn in ("9011", "9012")]
    assert replies == [
        ("9011", "20240315020000000", "QnRtn=1"),
        ("9012", "20240315020000000", "ExeRtn=1"),
        ("9011", "20240315020000001", "QnRtn=1"),
        ("9012", "20240315020000001", "ExeRtn=100"),
    ]
    assert summary.history_requests == 2
    hour0 = [p for p in receiver.packets(cn="2061") if p.data.data_time == "20240315000000"]
    assert len(hour0) == 2 and hour0[0].qn != hour0[1].qn  # live upload + history answer


async def test_dropped_connections_reconnect_and_resend(receiver: ReferenceReceiver) -> None:
    config = _config(receiver, count=3, speed=600, duration_s=2.5, versions={"2017": 1.0})
    task = asyncio.create_task(run_simulation(config))
    await asyncio.sleep(0.8)
    async with asyncio.timeout(10):  # a loaded machine may take longer to connect all three
        while len(receiver.links) < 3:
            await asyncio.sleep(0.02)
    receiver.drop()
    summary = await task
    assert summary.reconnects >= 3 and summary.unacked == 0
    for index in range(3):
        got = _minutes(receiver, make_mn(1, index))
        assert got == _expected_minutes(len(got))


async def test_no_ack_from_the_platform_means_resends_then_store(receiver: ReferenceReceiver) -> None:
    receiver.acking = False
    config = _config(receiver, count=1, speed=60, duration_s=1.0, drain_s=0.0, over_time_s=0.2, re_count=2)
    summary = await run_simulation(config)
    assert summary.acked == 0 and summary.resent >= 2 and summary.unacked >= 1


async def test_bad_crc_and_garbage_are_recovered_by_resends(receiver: ReferenceReceiver) -> None:
    noise = (Scenario("bad_crc", rate=0.2), Scenario("garbage", rate=0.2))
    config = _config(receiver, count=2, speed=600, duration_s=2.0, over_time_s=0.2, scenarios=noise)
    summary = await run_simulation(config)
    assert summary.bad_frames_sent > 0 and summary.garbage_sent > 0 and receiver.rejected > 0
    assert summary.unacked == 0
    for index in range(2):
        got = _minutes(receiver, make_mn(1, index))
        assert got == _expected_minutes(len(got))


@pytest.mark.slow
async def test_virtual_clock_produces_a_day_of_minute_data_in_seconds(receiver: ReferenceReceiver) -> None:
    config = _config(receiver, count=2, speed=86400 / 6, sim_duration_s=86400 + 30, window=32)
    summary = await run_simulation(config)
    assert summary.duration_s < 15
    for index in range(2):
        assert _minutes(receiver, make_mn(1, index)) == _expected_minutes(1440)


async def test_an_overloaded_run_stops_within_a_small_margin_of_its_duration(receiver: ReferenceReceiver) -> None:
    # 200 devices x 61 periods per real second is far more than one process can generate.
    config = _config(receiver, count=200, speed=3600, duration_s=2.0, drain_s=0.5)
    began = time.monotonic()
    summary = await run_simulation(config)
    wall_s = time.monotonic() - began
    assert wall_s < 2.0 + 0.5 + 1.0 and summary.duration_s <= wall_s
    assert summary.sim_duration_s == pytest.approx(7200, abs=10)
    assert summary.sent > 200 and summary.acked > 0


async def test_main_prints_a_json_summary(receiver: ReferenceReceiver, capsys: pytest.CaptureFixture[str]) -> None:
    port = receiver.server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cut = "cut:devices=1,start_s=5,duration_s=5"
    argv = ["--target", f"127.0.0.1:{port}", "--count", "2", "--duration", "0.5", "--json", "--quiet",
            "--speed", "60", "--versions", "2017=0.5,2025=0.5", "--scenario", cut]  # fmt: skip
    code = await asyncio.to_thread(main, argv)
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["devices"] == 2 and summary["sent"] >= 2 and "p99" in summary["ack_latency_ms"]


def test_main_rejects_a_bad_target() -> None:
    assert main(["--target", "nowhere", "--quiet"]) == 2


def test_hj212gw_simulate_hands_every_flag_to_the_simulator() -> None:
    # Returned, not argparse's SystemExit: `--target` reached the simulator's own parser.
    assert hj212gw_main(["simulate", "--target", "nowhere", "--quiet"]) == 2


@pytest.mark.parametrize(
    ("flag", "devices"),
    [("cut:devices=0.1,start_s=3600,duration_s=3600", 0.1), ("cut:devices=0;3", (0, 3)), ("cut:devices=all", "all")],
)
def test_scenario_flag_takes_a_fraction_indices_or_all(flag: str, devices: object) -> None:
    scenario = parse_scenario(parse_scenario_flag(flag))
    assert scenario.devices == devices


def test_scenario_flag_with_a_bad_device_selector_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--scenario", "cut:devices=some", "--quiet"]) == 2
    assert "devices='some': use all, a fraction" in capsys.readouterr().err


def test_start_takes_iso_or_a_span_ago() -> None:
    now = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
    assert parse_start("-6h", now) == now - timedelta(hours=6)
    assert parse_start("-90m", now) == now - timedelta(minutes=90)
    assert parse_start("-1.5d", now) == now - timedelta(hours=36)
    assert parse_start(START, now) == datetime.fromisoformat(START)
    assert parse_start(None, now) is None
    with pytest.raises(ValueError, match="a span ago"):
        parse_start("6 hours ago", now)
    assert main(["--start=yesterday", "--quiet"]) == 2


async def test_a_run_started_a_span_ago_sends_data_of_that_time(receiver: ReferenceReceiver) -> None:
    summary = await run_simulation(_config(receiver, count=1, start="-6h", speed=3600, duration_s=1.0))
    assert summary.sim_duration_s == pytest.approx(3600, rel=0.2)
    times = [datetime.strptime(r.packet.data.data_time, "%Y%m%d%H%M%S") for r in receiver.received if r.acked]
    shanghai_now = datetime.now(UTC).astimezone(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)
    assert times and max(times) < shanghai_now - timedelta(hours=4)
