-- Device state (issue 12, docs/monitoring.md "Device state"): the current state of each device
-- (`device_state`, one row per MN, written by the replica that follows it about once a second),
-- every transition (`device_events`), and one heartbeat per gateway (`gateway_leases`) so the
-- devices of a replica that died are taken offline by another one (cause `gateway_lost`).
-- The registry can fix a device's periods instead of learning them from its DataTimes.
ALTER TABLE devices ADD COLUMN min_interval_min smallint
    CHECK (min_interval_min IN (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30));
ALTER TABLE devices ADD COLUMN rtd_interval_s integer CHECK (rtd_interval_s BETWEEN 1 AND 3600);

CREATE TABLE device_state (
    mn            text COLLATE "C" PRIMARY KEY,
    state         text NOT NULL CHECK (state IN ('online', 'silent', 'offline')),
    since         timestamptz NOT NULL,
    cause         text NOT NULL,
    gateway_id    text,                        -- the replica that holds (or last held) the device
    connection_id bigint,                      -- its connection there (null when none)
    bound_at      timestamptz,                 -- when that connection bound the MN: a later holder wins
    last_data     jsonb NOT NULL DEFAULT '{}', -- {cn: {"data_time": …, "received_at": …}}
    periods       jsonb NOT NULL DEFAULT '{}', -- {cn: seconds}: the expected period of each scheduled CN
    updated_at    timestamptz NOT NULL
);
CREATE INDEX device_state_by_state ON device_state (state, mn);
CREATE INDEX device_state_held ON device_state (gateway_id) WHERE state <> 'offline';

CREATE TABLE device_events (
    id            bigserial PRIMARY KEY,
    mn            text COLLATE "C" NOT NULL,
    at            timestamptz NOT NULL,
    state         text NOT NULL CHECK (state IN ('online', 'silent', 'offline')),
    previous      text CHECK (previous IN ('online', 'silent', 'offline')),  -- null: first seen
    cause         text NOT NULL,
    gateway_id    text,
    connection_id bigint,
    details       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX device_events_mn_id ON device_events (mn, id DESC);

CREATE TABLE gateway_leases (
    gateway_id   text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL
);
