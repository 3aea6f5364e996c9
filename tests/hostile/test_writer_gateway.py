"""Hostile review, the write path through a running gateway: long codes and MNs stop no writer and
other devices are acked; a refused packet is acked when its raw frame is kept (and not when even
that is refused); a long MN's sighting is dropped alone. Real PostgreSQL and sockets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
from structlog.testing import capture_logs

from hj212gw.cli.serve import Running
from hj212gw.protocol.framing import encode_frame
from hj212gw.storage.rows import DeviceSeen
from tests.hostile.writer_items import long_text, readyz
from tests.integration.das import MN, DasClient, data_packet
from tests.integration.waiting import eventually

# -- acks, other devices, readiness, sightings -----------------------------------------------------


async def test_long_codes_and_mns_sent_to_a_gateway_stop_no_writer_and_other_devices_are_acked(
    running: Running, conn: asyncpg.Connection
) -> None:
    # Two packets with a ~3,000-character factor code and two with such an MN (the attack),
    # then normal packets from another device. Before: both writers died, nothing was acked again,
    # /readyz said ready. Whether the protocol layer or PostgreSQL refuses the long fields, the
    # writer must survive and every other packet be stored and acked.
    gateway = running.gateway
    assert gateway.port is not None
    attacker = await DasClient.connect(gateway.port)
    victim = await DasClient.connect(gateway.port)
    with capture_logs() as logs:
        for n in range(2):
            await attacker.send(data_packet(f"2024031510100000{n}", values={long_text(seed=n): "1.0"}))
        await attacker.send(data_packet("20240315101000002", mn=long_text(seed=5)))
        await asyncio.sleep(0.3)
        for n in range(5):
            await victim.send(data_packet(f"2024031510200000{n}", data_time=f"202403151{n}0000"))
        acks = await victim.replies(5, timeout_s=10)
        await eventually(lambda: _device_stored(conn), timeout_s=10)
    await attacker.close()
    await victim.close()
    assert sorted(a.packet.qn for a in acks) == [f"2024031510200000{n}" for n in range(5)]
    assert await conn.fetchval("SELECT count(*) FROM data WHERE mn = $1", MN) == 5
    assert [e for e in logs if e["log_level"] == "error"] == []
    assert gateway.metrics.registry.get_sample_value("hj212gw_task_restarts_total", {"task": "batch-writer-0"}) is None
    assert gateway.ready() and (await readyz(running))[0] == 200
    # The attacker's frames are evidence either way (refused by the protocol or by the database).
    assert await conn.fetchval("SELECT count(*) FROM raw_frames WHERE verdict <> 'ok'") >= 3
    assert await conn.fetchval("SELECT count(*) FROM data") == 5


async def _device_stored(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM devices WHERE mn = $1", MN))


async def test_a_long_mn_sighting_is_dropped_alone_and_the_others_are_written(
    running: Running, conn: asyncpg.Connection
) -> None:
    # Before: the sightings upsert failed every second (54000), kept the batch for the next try,
    # and housekeeping never reached the registry refresh or the readiness check.
    gateway = running.gateway
    now = datetime.now(UTC)
    with capture_logs() as logs:
        gateway.side_writes.record_sighting(DeviceSeen(long_text(seed=3), 1, "32", "1.2.3.4:5", now))
        gateway.side_writes.record_sighting(DeviceSeen("MNGOOD", 1, "32", "1.2.3.4:6", now))
        await eventually(lambda: _mn_stored(conn, "MNGOOD"), timeout_s=10)
    dropped = [e for e in logs if e["event"] == "sighting_rejected_by_database"]
    assert len(dropped) == 1 and dropped[0]["sqlstate"] == "54000"
    assert gateway.side_writes._sightings == {}  # not kept for another doomed try


async def _mn_stored(conn: asyncpg.Connection, mn: str) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM devices WHERE mn = $1", mn))


async def test_a_packet_whose_data_is_refused_is_acked_because_its_raw_frame_is_kept(
    running: Running, conn: asyncpg.Connection
) -> None:
    # A constraint makes PostgreSQL refuse this device's data whatever the protocol layer lets
    # through (23514): its raw frame is archived on its own, so a resend could only fail again and
    # the DAS gets its 9014 (docs/protocol.md).
    await conn.execute("ALTER TABLE data ADD CONSTRAINT refuse_w01018 CHECK (factor <> 'w01018')")
    gateway = running.gateway
    assert gateway.port is not None
    das = await DasClient.connect(gateway.port)
    with capture_logs() as logs:
        await das.send(data_packet("20240315101000001"))
        reply = await das.reply()
    await das.close()
    assert (reply.packet.cn, reply.packet.qn) == ("9014", "20240315101000001")
    assert await conn.fetchval("SELECT count(*) FROM data") == 0
    assert await conn.fetchval("SELECT verdict FROM raw_frames") == "refused_by_database:23514"
    (refused,) = [e for e in logs if e["event"] == "item_rejected_by_database"]
    assert refused["log_level"] == "warning" and refused["sqlstate"] == "23514" and refused["mn"] == MN
    metric = gateway.metrics.registry.get_sample_value(
        "hj212gw_items_refused_total", {"sqlstate_class": "23", "outcome": "archived"}
    )
    assert metric == 1


async def test_a_packet_refused_even_as_a_raw_frame_gets_no_ack(running: Running, conn: asyncpg.Connection) -> None:
    # Nothing of it is stored, so nothing may be acked: the DAS keeps it and sends it again.
    await conn.execute("ALTER TABLE data ADD CONSTRAINT refuse_w01018 CHECK (factor <> 'w01018')")
    await conn.execute("ALTER TABLE raw_frames ADD CONSTRAINT refuse_evidence CHECK (verdict NOT LIKE 'refused%')")
    gateway = running.gateway
    assert gateway.port is not None
    das = await DasClient.connect(gateway.port)
    with capture_logs():
        await das.send(data_packet("20240315101000001"))
        assert await das.nothing_within(1.0)
    await das.close()
    assert await conn.fetchval("SELECT count(*) FROM raw_frames") == 0
    metric = gateway.metrics.registry.get_sample_value(
        "hj212gw_items_refused_total", {"sqlstate_class": "23", "outcome": "not_archived"}
    )
    assert metric == 1
    assert gateway.writer.pending == 0 and gateway.ready()


async def test_a_split_part_whose_row_is_refused_is_acked_because_its_raw_frame_is_kept(
    running: Running, conn: asyncpg.Connection
) -> None:
    # The same answer for a part of a split transfer: its split_parts row is refused (23514), its
    # raw frame is archived, its 9014 goes out; the other parts are stored as usual.
    await conn.execute("ALTER TABLE split_parts ADD CONSTRAINT refuse_part_2 CHECK (pno <> 2)")
    cp = "DataTime=20240315100000;w01018-Avg=40.1,w01018-Flag=N;w21003-Avg=7.25,w21003-Flag=N"
    texts = [cp[:30], cp[30:]]
    frames = [
        encode_frame(f"QN=20240315101000001;ST=32;CN=2051;PW=123456;MN={MN};Flag=7;PNUM=2;PNO={n};CP=&&{t}&&".encode())
        for n, t in enumerate(texts, 1)
    ]
    gateway = running.gateway
    assert gateway.port is not None
    das = await DasClient.connect(gateway.port)
    with capture_logs() as logs:
        for wire in frames:
            await das.send(wire)
            assert (await das.reply()).packet.cn == "9014"
    await das.close()
    verdicts = [r["verdict"] for r in await conn.fetch("SELECT verdict FROM raw_frames ORDER BY id")]
    assert verdicts == ["ok", "refused_by_database:23514"]
    assert await conn.fetchval("SELECT array_agg(pno) FROM split_parts") == [1]
    assert [e["sqlstate"] for e in logs if e["event"] == "item_rejected_by_database"] == ["23514"]
