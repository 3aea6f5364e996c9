"""The device policy decisions: unknown MNs, wrong passwords, quarantined and disabled devices."""

import pytest

from hj212gw.registry import Admission, DeviceEntry, DeviceRegistry


def registry(unknown_mn: str = "accept", wrong_pw: str = "reject") -> DeviceRegistry:
    reg = DeviceRegistry(unknown_mn=unknown_mn, wrong_pw=wrong_pw)
    reg.load(
        [
            DeviceEntry("OK", "accepted", "123456", True, None, frozenset()),
            DeviceEntry("NOPW", "accepted", None, True, None, frozenset()),
            DeviceEntry("Q", "quarantined", None, True, None, frozenset()),
            DeviceEntry("R", "rejected", None, True, None, frozenset()),
            DeviceEntry("OFF", "accepted", None, False, "9014", frozenset({"modbus"})),
        ]
    )
    return reg


@pytest.mark.parametrize(
    "policy,expected",
    [
        ("accept", Admission("store")),
        ("quarantine", Admission("archive", "quarantined")),
        ("reject", Admission("refuse", "unknown_mn")),
    ],
)
def test_unknown_mn_policy(policy: str, expected: Admission) -> None:
    assert registry(unknown_mn=policy).admit("NEW", "000000") == expected


def test_password_is_checked_only_where_the_registry_has_one() -> None:
    reg = registry()
    assert reg.admit("OK", "123456") == Admission("store")
    assert reg.admit("OK", "654321") == Admission("refuse", "wrong_pw")
    assert reg.admit("NOPW", "anything") == Admission("store")
    assert registry(wrong_pw="accept").admit("OK", "654321") == Admission("store")


def test_registry_status_decides_for_known_devices() -> None:
    reg = registry()
    assert reg.admit("Q", None) == Admission("archive", "quarantined")
    assert reg.admit("R", None) == Admission("refuse", "device_rejected")
    assert reg.admit("OFF", None) == Admission("refuse", "device_rejected")


def test_packets_without_an_mn_are_archived_only() -> None:
    assert registry().admit("", None) == Admission("archive", "no_mn")
    assert registry().admit(None, None) == Admission("archive", "no_mn")


def test_remembered_devices_are_accepted_until_the_next_refresh() -> None:
    reg = registry(unknown_mn="reject")
    reg.remember("NEW")
    assert reg.admit("NEW", None) == Admission("store")


def test_plain_devices_keep_only_their_mn_and_overrides_are_published() -> None:
    reg = registry()
    assert len(reg) == 5
    assert reg.get("NOPW") == DeviceEntry("NOPW", "accepted", None, True, None, frozenset())
    assert reg.get("NEW") is None
    assert reg.heartbeat_overrides == {"OFF": "9014"}
    assert reg.crc_overrides == {"OFF": frozenset({"modbus"})}
