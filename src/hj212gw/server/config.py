"""Settings -> the policies the pure parts take: the session's `SessionConfig` (protocol/) and the
rows' `TimePolicy` (ingest/). The one place where `Settings` meets them."""

from collections.abc import Mapping
from datetime import timedelta
from zoneinfo import ZoneInfo

from hj212gw.ingest.rows import TimePolicy
from hj212gw.protocol.decoder import CrcPolicy
from hj212gw.protocol.framing import FrameLimits
from hj212gw.protocol.session import SessionConfig
from hj212gw.server.registry import DeviceRegistry
from hj212gw.settings import Settings


def session_config_from(
    settings: Settings, registry: DeviceRegistry, sm4_keys: Mapping[str, tuple[bytes, ...]] | None = None
) -> SessionConfig:
    """Protocol policy from the settings; per-device overrides are live views of the registry;
    `sm4_keys`: MN -> SM4 keys of 2025 devices that encrypt their CP (auth.load_sm4_keys)."""
    proto = settings.protocol
    return SessionConfig(
        limits=FrameLimits(max_segment_bytes=proto.max_segment_bytes, max_buffer_bytes=proto.max_buffer_bytes),
        keys=sm4_keys or {},
        crc_policy=CrcPolicy(
            mode=proto.crc_policy,
            allowed_variants=frozenset(proto.crc_variants),
            per_mn_variants=registry.crc_overrides,
        ),
        heartbeat_reply=proto.heartbeat_reply,
        heartbeat_reply_per_mn=registry.heartbeat_overrides,
        mn_change=proto.mn_change,
        device_tz=ZoneInfo(settings.device_timezone),
        send_time_after_1013=proto.time_calibration,
        max_consecutive_rejects=settings.connections.max_consecutive_rejects,
        split_timeout_s=proto.split_timeout_s,
        max_split_groups=proto.max_split_groups,
        max_split_parts=proto.max_split_parts,
        max_split_bytes=proto.max_split_bytes,
        max_pending_requests=proto.max_pending_requests,
    )


def time_policy_from(settings: Settings) -> TimePolicy:
    """How far a DataTime may be from the receive time before its rows are marked `time_suspect`."""
    return TimePolicy(
        device_tz=ZoneInfo(settings.device_timezone),
        future_tolerance=timedelta(seconds=settings.protocol.future_tolerance_s),
        past_tolerance=timedelta(days=settings.protocol.past_tolerance_days),
    )
