"""Scanning rules: device state, given-up gaps and long flag episodes at `now` (stateless).

Everything comes from the inputs, so a newly elected replica computes the same result as the one
before it. Only differences from `active` (the alerts firing now) are returned: a Fire for a
condition that holds and does not fire yet, a Clear for a firing alert whose condition no longer
holds. Rules:
- `device_offline` / `device_silent` (Art. 20(9)): the device has been offline (silent) for at
  least `offline_alert_after_s` (`silent_alert_after_s`); cleared when it is in another state.
  A device absent from `devices` is not judged.
- `gap_given_up` (Art. 20(7)), detail = CN: gaps of (MN, CN) whose backfill gave up; detail
  `CN/no_data` for those the device answered ExeRtn 100 (no data) for, a period it should hold.
  Cleared when no such gap remains. `gaps` should hold every given-up gap (others are ignored).
- `fault_over_24h` (Art. 18(3), 30(8)): a `flag_episode` D alert started more than
  `fault_alert_after_h` ago (backup analyser or manual monitoring is now required).
- `fault_not_restored` (Art. 18(3)): a D episode still running after `fault_restore_working_days`
  working days (days of `calendar`, Beijing time) from its start.
Both fault rules clear when their D episode is no longer active. Imports rules.* only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from hj212gw.rules.calendar import WorkCalendar
from hj212gw.rules.catalogue import fire
from hj212gw.rules.model import ActiveAlert, AlertChange, AlertKey, Clear, DeviceStatus, Fire, GapView
from hj212gw.rules.thresholds import Thresholds

SCAN_RULES = ("device_offline", "device_silent", "gap_given_up", "fault_over_24h", "fault_not_restored")


def scan(
    now: datetime,
    devices: Sequence[DeviceStatus],
    gaps: Sequence[GapView],
    active: Sequence[ActiveAlert],
    thresholds: Thresholds,
    calendar: WorkCalendar,
) -> list[AlertChange]:
    """The changes the scanning rules make at `now` (see the module docstring).

    Args:
        now: the scan's time (aware, UTC).
        devices: the current state of every device to judge.
        gaps: the given-up gaps (other statuses are ignored).
        active: every alert firing now (all rules; the scan reads its own and flag_episode D).
        thresholds: offline/silent tolerances and fault clocks, per device.
        calendar: working days for fault_not_restored.
    """
    holds: dict[AlertKey, Fire] = {}
    for device in devices:
        _device(now, device, thresholds, holds)
    _gaps(now, gaps, holds)
    for alert in active:
        if alert.key.rule == "flag_episode" and alert.key.detail == "D":
            _fault(now, alert, thresholds, calendar, holds)
    judged_devices = {device.mn for device in devices}
    firing = {alert.key for alert in active if alert.key.rule in SCAN_RULES}
    changes: list[AlertChange] = [change for key, change in holds.items() if key not in firing]
    for key in sorted(firing - holds.keys(), key=lambda k: (k.rule, k.mn, k.factor, k.detail)):
        if key.rule in ("device_offline", "device_silent") and key.mn not in judged_devices:
            continue
        changes.append(Clear(key, now))
    return changes


def _device(now: datetime, device: DeviceStatus, thresholds: Thresholds, holds: dict[AlertKey, Fire]) -> None:
    limits = thresholds.for_device(device.mn)
    tolerance = {"offline": limits.offline_alert_after_s, "silent": limits.silent_alert_after_s}.get(device.state)
    if tolerance is None or (now - device.since).total_seconds() < tolerance:
        return
    key = AlertKey(f"device_{device.state}", device.mn)
    minutes = int((now - device.since).total_seconds() // 60)
    overdue = ", ".join(str(cn) for cn in _as_list(device.details.get("overdue")))
    details = {"cause": device.cause, "since": device.since.isoformat(), **dict(device.details)}
    holds[key] = fire(key, device.since, now, threshold=tolerance, minutes=minutes, overdue=overdue, details=details)


def _gaps(now: datetime, gaps: Sequence[GapView], holds: dict[AlertKey, Fire]) -> None:
    given_up: dict[tuple[str, str, bool], list[GapView]] = defaultdict(list)
    for gap in gaps:
        if gap.status == "given_up":
            given_up[(gap.mn, gap.cn, False)].append(gap)
            if gap.reason == "no_data":
                given_up[(gap.mn, gap.cn, True)].append(gap)
    for (mn, cn, no_data), found in given_up.items():
        key = AlertKey("gap_given_up", mn, "", f"{cn}/no_data" if no_data else cn)
        missing = sum(gap.missing for gap in found)
        reasons = sorted({gap.reason or "unknown" for gap in found})
        details = {
            "cn": cn,
            "gaps": len(found),
            "missing": missing,
            "reasons": reasons,
            "first_start": min(gap.start for gap in found).isoformat(),
            "last_end": max(gap.end for gap in found).isoformat(),
        }
        started = min(gap.start for gap in found)
        holds[key] = fire(key, started, now, value=missing, cn=cn, missing=missing, reasons=", ".join(reasons),
                          details=details)  # fmt: skip


def _fault(
    now: datetime, episode: ActiveAlert, thresholds: Thresholds, calendar: WorkCalendar, holds: dict[AlertKey, Fire]
) -> None:
    mn, factor = episode.key.mn, episode.key.factor
    limits = thresholds.for_factor(mn, factor)
    started = episode.started_at
    details = {"episode": episode.key.fingerprint, "fault_started_at": started.isoformat()}
    over = started + timedelta(hours=limits.fault_alert_after_h)
    if now > over:
        key = AlertKey("fault_over_24h", mn, factor)
        holds[key] = fire(key, over, now, threshold=limits.fault_alert_after_h, details=details)
    deadline = calendar.add_working_days(started, limits.fault_restore_working_days)
    if now > deadline:
        key = AlertKey("fault_not_restored", mn, factor)
        known = calendar.knows_year(started.year) and calendar.knows_year(deadline.year)
        holds[key] = fire(
            key, deadline, now, threshold=float(limits.fault_restore_working_days), deadline=deadline.isoformat(),
            details={**details, "deadline": deadline.isoformat(), "calendar_known": known},
        )  # fmt: skip


def _as_list(value: object) -> list[object]:
    if isinstance(value, list | tuple | set | frozenset):
        return list(value)
    return [] if value is None else [value]
