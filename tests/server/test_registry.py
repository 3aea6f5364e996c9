"""The device policy decisions: unknown MNs, PW authentication (tofu, registry, off), quarantined
and disabled devices, pins learned from PostgreSQL."""

import gc

import asyncpg
import pytest

from hj212gw.server.registry import Admission, AuthMode, DeviceEntry, DeviceRegistry
from hj212gw.storage.db import Database


def registry(unknown_mn: str = "accept", auth: AuthMode = "tofu") -> DeviceRegistry:
    reg = DeviceRegistry(unknown_mn=unknown_mn, auth=auth)
    reg.load(
        [
            DeviceEntry("OK", "accepted", "123456", True, None, frozenset()),
            DeviceEntry("NOPW", "accepted", None, True, None, frozenset()),
            DeviceEntry("EMPTY", "accepted", "", True, None, frozenset()),
            DeviceEntry("Q", "quarantined", "111111", True, None, frozenset()),
            DeviceEntry("QNOPW", "quarantined", None, True, None, frozenset()),
            DeviceEntry("R", "rejected", "111111", True, None, frozenset()),
            DeviceEntry("OFF", "accepted", None, False, "9014", frozenset({"modbus"})),
        ]
    )
    return reg


@pytest.mark.parametrize(
    "policy,expected",
    [
        ("accept", Admission("pin")),
        ("quarantine", Admission("pin")),
        ("reject", Admission("refuse", "unknown_mn")),
    ],
)
def test_an_unknown_mn_is_pinned_first_unless_the_policy_rejects_it(policy: str, expected: Admission) -> None:
    assert registry(unknown_mn=policy).admit("NEW", "000000") == expected


def test_a_pinned_pw_is_required_and_a_device_without_one_gets_pinned() -> None:
    reg = registry()
    assert reg.admit("OK", "123456") == Admission("store")
    assert reg.admit("OK", "654321") == Admission("refuse", "wrong_pw")
    assert reg.admit("OK", None) == Admission("refuse", "wrong_pw")
    assert reg.admit("OK", "12345") == Admission("refuse", "wrong_pw")
    assert reg.admit("OK", "1234567") == Admission("refuse", "wrong_pw")
    assert reg.admit("NOPW", "anything") == Admission("pin")
    assert reg.admit("EMPTY", None) == Admission("store")  # a device that sends no PW pins the empty one
    assert reg.admit("OK", "12345\udcff") == Admission("refuse", "wrong_pw")  # never a TypeError


def test_registry_mode_admits_only_registered_pws_and_quarantined_devices_archive_without_one() -> None:
    reg = registry(auth="registry")
    assert reg.admit("OK", "123456") == Admission("store")
    assert reg.admit("NOPW", "x") == Admission("refuse", "pw_not_registered")
    assert reg.admit("NEW", "x") == Admission("refuse", "pw_not_registered")
    assert reg.admit("QNOPW", "x") == Admission("archive", "quarantined")
    assert registry(unknown_mn="quarantine", auth="registry").admit("NEW", "x") == Admission("archive", "quarantined")


def test_auth_off_checks_no_pw() -> None:
    reg = registry(auth="off", unknown_mn="quarantine")
    assert reg.admit("OK", "654321") == Admission("store")
    assert reg.admit("NEW", None) == Admission("archive", "quarantined")
    assert registry(auth="off").admit("NEW", None) == Admission("store")


def test_registry_status_decides_for_known_devices() -> None:
    reg = registry()
    assert reg.admit("Q", "111111") == Admission("archive", "quarantined")
    assert reg.admit("Q", "000000") == Admission("refuse", "wrong_pw")
    assert reg.admit("R", "111111") == Admission("refuse", "device_rejected")
    assert reg.admit("OFF", None) == Admission("refuse", "device_rejected")


def test_packets_without_an_mn_are_archived_only() -> None:
    assert registry().admit("", None) == Admission("archive", "no_mn")
    assert registry().admit(None, None) == Admission("archive", "no_mn")


def test_a_learned_pin_decides_from_then_on_with_the_status_postgresql_holds() -> None:
    reg = registry(unknown_mn="quarantine")
    reg.learn_pin("NEW", "777777", "quarantined")
    assert reg.admit("NEW", "777777") == Admission("archive", "quarantined")
    assert reg.admit("NEW", "777778") == Admission("refuse", "wrong_pw")
    reg.learn_pin("OFF", "1", "accepted")  # keeps the device's other overrides
    assert reg.heartbeat_overrides == {"OFF": "9014"}
    assert reg.new_device_status() == "quarantined"
    assert registry().new_device_status() == "accepted"


def test_remembered_devices_are_known_until_the_next_refresh() -> None:
    reg = registry(unknown_mn="reject", auth="off")
    reg.remember("NEW")
    assert reg.admit("NEW", None) == Admission("store")


def test_plain_devices_keep_only_their_mn_and_pw_and_overrides_are_published() -> None:
    reg = registry()
    assert len(reg) == 7
    assert reg.get("NOPW") == DeviceEntry("NOPW", "accepted", None, True, None, frozenset())
    assert reg.get("OK") == DeviceEntry("OK", "accepted", "123456", True, None, frozenset())
    assert reg.get("NEW") is None
    assert reg.heartbeat_overrides == {"OFF": "9014"}
    assert reg.crc_overrides == {"OFF": frozenset({"modbus"})}


def test_a_pw_change_admits_the_new_pw_in_flight_and_the_old_one_for_a_while_after() -> None:
    reg = registry()
    reg.expect_pw("OK", "654321")  # a 1072 in flight
    assert reg.admit("OK", "654321") == Admission("store") and reg.admit("OK", "123456") == Admission("store")
    assert reg.admit("OK", "999999") == Admission("refuse", "wrong_pw")
    reg.change_pw("OK", "654321", old_for_s=0.0)  # executed; the old PW's grace already over
    assert reg.admit("OK", "654321") == Admission("store")
    assert reg.admit("OK", "123456") == Admission("refuse", "wrong_pw")
    reg.expect_pw("OK", "111111")
    reg.expect_pw("OK", None)  # that one failed: only the pinned PW again
    assert reg.admit("OK", "111111") == Admission("refuse", "wrong_pw")


def test_expired_alternate_pws_are_dropped_when_the_next_pw_change_comes() -> None:
    reg = registry()
    for n in range(50):  # PW changes of 50 devices that never present their old PW again
        reg.change_pw(f"MN{n}", "654321", old_for_s=0.0)
    reg.expect_pw("OK", "111111")
    assert reg._alternate_pw.keys() == {"OK"}


async def test_a_refresh_postgresql_refuses_raises_and_keeps_the_devices_loaded(
    db: Database, conn: asyncpg.Connection
) -> None:
    """`refresh` runs compiled, and its query fails inside `async with pool.acquire()`: the shape
    (an asyncpg error through a compiled `async with`) that crashed the interpreter when
    storage/batch.py was compiled (docs/architecture.md, "Compiled modules"). Many times over, with
    a collection between: it raises the error, and the registry keeps what it held."""
    reg = registry()
    await conn.execute("ALTER TABLE devices RENAME TO devices_away")
    for _ in range(200):
        with pytest.raises(asyncpg.UndefinedTableError):
            await reg.refresh(db)
    gc.collect()
    assert len(reg) == 7 and reg.get("Q") == DeviceEntry("Q", "quarantined", "111111", True, None, frozenset())
    await conn.execute("ALTER TABLE devices_away RENAME TO devices")
    await conn.execute("INSERT INTO devices (mn, status, first_seen) VALUES ('BACK', 'accepted', now())")
    await reg.refresh(db)
    assert len(reg) == 1 and reg.get("BACK") is not None
