"""Devices are authenticated by default (issue 9, item 9): trust on first use, wrong PWs that never
evict and are slowed down per source IP, several MNs on one connection, rate-limited moves, PWs
kept out of logs and the API, SM4 keys for 2025 devices.

Real gateways on port 0, real PostgreSQL, real sockets. The first test is the finding: with the
defaults, one packet with a victim's MN and any PW took the device over.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.api import bound_port
from hj212gw.cli import serve
from hj212gw.cli.serve import Running
from hj212gw.storage.db import Database
from tests.conftest import Dial
from tests.integration.das import MN, PW, DasClient, data_packet, settings_for
from tests.integration.proxy import TcpProxy
from tests.integration.waiting import until

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "packets"
STOLEN = "999999"  # what an attacker who knows only the MN sends
FAST_BACKOFF = {"wrong_pw_backoff_s": 0.05, "wrong_pw_backoff_max_s": 0.4}

Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(pg_dsn: str, schema: str) -> AsyncIterator[Start]:
    """Start gateways on port 0 against the test's schema; all are stopped afterwards."""
    started: list[Running] = []

    async def run(**overrides: Any) -> Running:
        devices = {**FAST_BACKOFF, **overrides.pop("devices", {})}
        running = await serve.start(settings_for(pg_dsn, schema, devices=devices, **overrides))
        started.append(running)
        return running

    yield run
    for running in started:
        if not running.gateway._stopping:
            await running.stop()


def sample(running: Running, name: str, **labels: str) -> float:
    return running.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


def at(minute: int) -> str:
    return f"2024031510{minute:02d}00"


async def acked(das: DasClient, qn: str, **fields: Any) -> bool:
    await das.send(data_packet(qn, **fields))
    reply = await das.reply()
    return (reply.packet.cn, reply.packet.qn) == ("9014", qn)


# ---- the finding --------------------------------------------------------------------------------


async def test_a_packet_with_a_known_mn_and_any_pw_takes_nothing_over(
    start: Start, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start()
    device = await dial(running)
    assert await acked(device, "20240315101000001", values={"w01018": "40.1"})

    attacker = await dial(running)
    await attacker.send(data_packet("20240315101000002", pw=STOLEN, values={"w01018": "99.9"}))
    refusal = await attacker.reply()
    assert (refusal.packet.cn, refusal.packet.cp) == ("9011", "QnRtn=3")  # PW error, not a 9014
    assert await attacker.closed_by_gateway()

    assert not await device.closed_by_gateway(timeout_s=0.3)  # the device's connection lives on
    assert await acked(device, "20240315101000003", data_time=at(1))
    assert await conn.fetchval("SELECT avg FROM data WHERE mn = $1 AND data_time = '2024-03-15 02:00Z'", MN) == 40.1
    assert sample(running, "hj212gw_auth_failures_total", reason="wrong_pw") == 1
    assert sample(running, "hj212gw_connections_closed_total", reason="replaced_by_newer_connection") == 0
    assert running.gateway.online()[MN].connection_id == running.gateway.bindings.by_mn[MN].connection_id


# ---- trust on first use -------------------------------------------------------------------------


async def test_the_first_pw_is_pinned_in_postgresql_and_required_after_a_restart(
    start: Start, dial: Dial, conn: asyncpg.Connection
) -> None:
    first = await start()
    das = await dial(first)
    assert await acked(das, "20240315101000001")
    pinned = await conn.fetchrow("SELECT pw, pw_source, pw_set_at FROM devices WHERE mn = $1", MN)
    assert (pinned["pw"], pinned["pw_source"]) == (PW, "first_use") and pinned["pw_set_at"] is not None
    await das.close()
    await first.stop()

    second = await start()
    impostor = await dial(second)
    await impostor.send(data_packet("20240315101000002", pw=STOLEN, data_time=at(1)))
    assert (await impostor.reply()).packet.cp == "QnRtn=3"
    again = await dial(second)
    assert await acked(again, "20240315101000003", data_time=at(2))
    assert await conn.fetchval("SELECT count(*) FROM data WHERE mn = $1", MN) == 2


async def test_two_replicas_meeting_a_new_mn_at_once_pin_one_pw(
    start: Start, dial: Dial, conn: asyncpg.Connection
) -> None:
    replicas = [await start(gateway_id="replica-a"), await start(gateway_id="replica-b")]
    one = await start(gateway_id="replica-a2")
    clients = [await dial(running) for running in (*replicas, one)]
    pws = ["111111", "222222", "333333"]
    sends = [
        das.send(data_packet(f"2024031510100000{n}", pw=pw, data_time=at(n)))
        for n, (das, pw) in enumerate(zip(clients, pws, strict=True))
    ]
    await asyncio.gather(*sends)
    replies = [await das.reply() for das in clients]

    pinned = await conn.fetchval("SELECT pw FROM devices WHERE mn = $1", MN)
    assert pinned in pws
    answers = {pw: reply.packet.cn for pw, reply in zip(pws, replies, strict=True)}
    assert answers == {pw: "9014" if pw == pinned else "9011" for pw in pws}
    assert await conn.fetchval("SELECT count(*) FROM data WHERE mn = $1", MN) == 1


async def test_connections_of_one_gateway_racing_for_a_new_mn_wait_for_the_same_pin(
    start: Start, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start()
    clients = [await dial(running) for _ in range(4)]
    pws = ["100001", "100002", "100003", "100004"]
    await asyncio.gather(
        *(
            das.send(data_packet(f"2024031510100000{n}", pw=pw))
            for n, (das, pw) in enumerate(zip(clients, pws, strict=True))
        )
    )
    cns = [(await das.reply()).packet.cn for das in clients]
    assert sorted(cns) == ["9011", "9011", "9011", "9014"]
    assert await conn.fetchval("SELECT pw FROM devices WHERE mn = $1", MN) == pws[cns.index("9014")]
    assert sample(running, "hj212gw_device_pins_total", outcome="pinned") == 1


async def test_registry_mode_admits_only_pws_an_operator_registered(
    start: Start, dial: Dial, db: Database, conn: asyncpg.Connection
) -> None:
    await db.pool.execute("INSERT INTO devices (mn, pw, pw_source) VALUES ('KNOWN', '424242', 'operator')")
    running = await start(devices={"auth": "registry"})
    stranger = await dial(running)
    await stranger.send(data_packet("20240315101000001", mn="STRANGER"))
    assert (await stranger.reply()).packet.cp == "QnRtn=3"
    known = await dial(running)
    assert await acked(known, "20240315101000002", mn="KNOWN", pw="424242")
    assert sample(running, "hj212gw_auth_failures_total", reason="pw_not_registered") == 1
    assert await conn.fetchval("SELECT pw FROM devices WHERE mn = 'STRANGER'") is None


async def test_a_pin_postgresql_refuses_closes_only_that_connection(
    start: Start, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start()
    # The parser rejects an MN that PostgreSQL text cannot hold (a NUL byte), so the refusal comes
    # from a constraint here.
    await conn.execute("ALTER TABLE devices ADD CONSTRAINT refuse_odd_mn CHECK (mn <> 'ODDMN')")
    with capture_logs() as logs:
        odd = await dial(running)
        await odd.send(data_packet("20240315101000001", mn="ODDMN"))
        assert await odd.closed_by_gateway()
        das = await dial(running)
        assert await acked(das, "20240315101000002")
    failed = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in failed] == ["pin_failed"]
    assert sample(running, "hj212gw_device_pins_total", outcome="failed") == 1
    await until(lambda: sample(running, "hj212gw_connections_closed_total", reason="pin_failed") == 1)


async def test_a_new_mn_during_an_outage_waits_for_its_pin_then_is_stored_and_acked(
    pg_dsn: str, schema: str, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    running = await serve.start(settings_for(proxy.dsn_via(pg_dsn), schema))
    try:
        assert running.gateway.port is not None
        das = await DasClient.connect(running.gateway.port)
        proxy.cut()
        await das.send(data_packet("20240315101000001"))
        assert await das.nothing_within(0.5)  # no pin, so nothing stored, bound or acked
        assert running.gateway.bindings.by_mn == {}
        proxy.restore()
        reply = await das.reply(timeout_s=15)
        assert (reply.packet.cn, reply.packet.qn) == ("9014", "20240315101000001")
        assert await conn.fetchval("SELECT pw FROM devices WHERE mn = $1", MN) == PW
        running.gateway.pinner.timeout_s = 0.5
        proxy.cut()
        other = await DasClient.connect(running.gateway.port)
        await other.send(data_packet("20240315101000002", mn="NEWER"))
        assert await other.closed_by_gateway(timeout_s=10)  # gave up: the DAS comes back later
        await das.close()
        await other.close()
    finally:
        proxy.restore()
        await running.stop()
    assert sample(running, "hj212gw_device_pins_total", outcome="failed") == 1


# ---- wrong PWs ----------------------------------------------------------------------------------


async def test_a_wrong_pw_storm_from_one_ip_is_slowed_counted_and_never_evicts(start: Start, dial: Dial) -> None:
    running = await start()
    device = await dial(running)
    assert await acked(device, "20240315101000001")

    took: list[float] = []
    with capture_logs() as logs:
        for n in range(6):
            attacker = await dial(running)
            began = time.monotonic()
            await attacker.send(data_packet(f"2024031510200000{n}", pw=f"Gz{n}q7x", data_time=at(n)))
            assert (await attacker.reply()).packet.cp == "QnRtn=3"
            assert await attacker.closed_by_gateway()
            took.append(time.monotonic() - began)
            await attacker.close()
    # Each answer waits for its failure's delay: 0.05 s, doubling per failure, at most 0.4 s.
    assert took[0] < 0.3
    assert all(t >= 0.3 for t in took[3:]), took
    assert sample(running, "hj212gw_auth_failures_total", reason="wrong_pw") == 6
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["frame_rejected"] * 6
    assert all(e["reason"] == "wrong_pw" and "PW=***" in e["raw"] for e in warnings)
    assert all(f"Gz{n}q7x" not in repr(logs) for n in range(6))

    # An attacker who does not wait for the answer: the next connection from the IP is not read
    # until the backoff ends, whatever it sends.
    quick = await dial(running)
    await quick.send(data_packet("20240315102000007", pw=STOLEN, data_time=at(7)))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    follower = await dial(running)
    assert await acked(follower, "20240315102000008", mn="ANOTHER", pw="123123")
    assert time.monotonic() - began >= 0.3
    assert sample(running, "hj212gw_auth_throttled_total") == 1

    assert not await device.closed_by_gateway(timeout_s=0.2)
    assert await acked(device, "20240315101000002", data_time=at(30))
    assert len(running.gateway.wrong_pw_backoff) == 1


async def test_a_connection_held_by_a_wrong_pw_reads_nothing_more(
    start: Start, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start(devices={"wrong_pw_backoff_s": 0.5, "wrong_pw_backoff_max_s": 0.5})
    device = await dial(running)
    assert await acked(device, "20240315101000001")
    attacker = await dial(running)
    # A wrong PW followed at once by packets with the right one on the same connection.
    wrong = data_packet("20240315101000002", pw=STOLEN, data_time=at(1))
    right = data_packet("20240315101000003", data_time=at(2))
    await attacker.send(wrong + right)
    reply = await attacker.reply(timeout_s=3)
    assert reply.packet.cp == "QnRtn=3"
    assert await attacker.closed_by_gateway()
    assert await conn.fetchval("SELECT count(*) FROM data WHERE qn = '20240315101000003'") == 0


# ---- several MNs, moves -------------------------------------------------------------------------


async def test_one_connection_carries_several_mns_but_binds_none_without_its_pw(
    start: Start, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start()
    other = await dial(running)
    assert await acked(other, "20240315101000001", mn="POINT3", pw="333333")

    das = await dial(running)
    with capture_logs() as logs:
        assert await acked(das, "20240315101000002", mn="POINT1", pw="111111")
        assert await acked(das, "20240315101000003", mn="POINT2", pw="222222")
        assert await acked(das, "20240315101000004", mn="POINT1", pw="111111", data_time=at(1))
    online = running.gateway.online()
    assert online["POINT1"].connection_id == online["POINT2"].connection_id != online["POINT3"].connection_id
    assert (online["POINT1"].mn, online["POINT2"].mn) == ("POINT1", "POINT2")
    assert not [e for e in logs if e["log_level"] == "warning"]  # switching between its MNs is normal

    await das.send(data_packet("20240315101000005", mn="POINT3", pw="000000"))
    assert (await das.reply()).packet.cp == "QnRtn=3"
    assert await das.closed_by_gateway()
    assert running.gateway.online()["POINT3"].connection_id == online["POINT3"].connection_id
    assert await acked(other, "20240315101000006", mn="POINT3", pw="333333", data_time=at(1))


async def test_an_mn_moves_between_live_connections_at_most_once_per_interval(start: Start, dial: Dial) -> None:
    running = await start(devices={"move_interval_s": 30})
    first = await dial(running)
    assert await acked(first, "20240315101000001")
    second = await dial(running)
    with capture_logs() as logs:
        assert await acked(second, "20240315101000002", data_time=at(1))  # the DAS reconnected
        assert await first.closed_by_gateway()
        third = await dial(running)
        await third.send(data_packet("20240315101000003", data_time=at(2)))
        assert await third.nothing_within(0.3)  # no answer: the DAS keeps the data, sends it later
        assert await third.closed_by_gateway()
    moved = [e for e in logs if e["event"] == "mn_moved"]
    assert len(moved) == 1 and moved[0]["log_level"] == "warning" and moved[0]["mn"] == MN
    assert sample(running, "hj212gw_mn_moves_total", outcome="moved") == 1
    assert sample(running, "hj212gw_mn_moves_total", outcome="rate_limited") == 1
    assert await acked(second, "20240315101000004", data_time=at(3))  # the holder is undisturbed


async def test_one_connection_may_carry_at_most_max_mns(start: Start, dial: Dial) -> None:
    running = await start(devices={"max_mns_per_connection": 2})
    das = await dial(running)
    assert await acked(das, "20240315101000001", mn="A")
    assert await acked(das, "20240315101000002", mn="B")
    await das.send(data_packet("20240315101000003", mn="C"))
    assert (await das.reply()).packet.cp == "QnRtn=2"
    assert await das.closed_by_gateway()
    assert sample(running, "hj212gw_frames_rejected_total", reason="too_many_mns") == 1


# ---- secrets ------------------------------------------------------------------------------------


async def test_pws_never_reach_a_log_line_or_the_api(start: Start, dial: Dial) -> None:
    secret, guess = "S3cr3t", "G7ess9"
    with capture_logs() as logs:
        running = await start()
        das = await dial(running)
        assert await acked(das, "20240315101000001", pw=secret)
        attacker = await dial(running)
        await attacker.send(data_packet("20240315101000002", pw=guess, data_time=at(1)))
        assert await attacker.closed_by_gateway()
        await until(lambda: sample(running, "hj212gw_auth_failures_total", reason="wrong_pw") == 1)
        base = f"http://127.0.0.1:{bound_port(running.http_runner)}"
        async with aiohttp.ClientSession() as http:
            bodies = []
            for path in ("/api/v1/devices", f"/api/v1/devices/{MN}", "/metrics"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200
                    bodies.append(await resp.text())
    assert all(secret not in body and guess not in body for body in bodies)
    assert secret not in repr(logs) and guess not in repr(logs)
    assert json.loads(bodies[1])["mn"] == MN


# ---- SM4 keys -----------------------------------------------------------------------------------

SM4 = FIXTURES / "sm4/2051-a2-example1-encrypted.hj212"
SM4_MN = "010000A8900016F000169DC0"


@pytest.mark.parametrize("source", ["file", "environment"])
async def test_an_encrypted_2025_packet_is_decrypted_with_the_key_serve_was_given(
    start: Start,
    dial: Dial,
    conn: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    key = json.loads(SM4.with_suffix(".json").read_text())["key"]
    if source == "file":
        keys_file = tmp_path / "sm4-keys.toml"
        keys_file.write_text(f'"{SM4_MN}" = ["{key.encode().hex()}"]\n')
        devices: dict[str, Any] = {"sm4_keys_file": keys_file}
    else:
        monkeypatch.setenv("HJ212GW_DEVICES__SM4_KEYS", json.dumps({SM4_MN: key}))
        devices = {}
    with capture_logs() as logs:
        running = await start(devices=devices)
        das = await dial(running)
        await das.send(SM4.read_bytes().splitlines(keepends=True)[0])
        reply = await das.reply()
    assert (reply.packet.cn, reply.packet.mn) == ("9014", SM4_MN)
    assert await conn.fetchval("SELECT count(*) FROM data WHERE mn = $1", SM4_MN) > 0
    assert key not in repr(logs) and key.encode().hex() not in repr(logs)


async def test_without_its_key_an_encrypted_packet_is_rejected_not_stored(
    start: Start, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start()
    das = await dial(running)
    await das.send(SM4.read_bytes().splitlines(keepends=True)[0])
    assert await das.nothing_within(0.3)
    # Without the key the CRC (over the plaintext) cannot match: rejected, archived, not stored.
    await until(lambda: sample(running, "hj212gw_frames_rejected_total", reason="crc_mismatch") == 1)
    assert await conn.fetchval("SELECT count(*) FROM data") == 0
