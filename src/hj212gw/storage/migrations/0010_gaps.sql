-- Gaps on the DataTime grid (issue #12; monitor.gaps tracks them in memory, storage.gaps writes
-- them about once a second).
--
-- series: one row per (mn, cn) of minute (2051), hour (2061) and day (2031) data: its period,
-- the oldest and newest period stored, and the replica (`owner`, its gateway_id) that tracks it.
-- A replica that loads a device claims its series; a replica that finds a series claimed by
-- another stops writing it and forgets it (the device moved).
CREATE TABLE series (
    mn         text COLLATE "C" NOT NULL,
    cn         text COLLATE "C" NOT NULL,
    period_s   integer NOT NULL CHECK (period_s > 0),
    first_time timestamptz NOT NULL,  -- start of the oldest period stored
    last_time  timestamptz NOT NULL,  -- start of the newest period stored
    owner      text,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (mn, cn)
);
CREATE INDEX series_owner ON series (owner);

-- gaps: runs of missing periods. start_time and end_time are the starts of the first and the last
-- missing period, both inclusive (what a history fetch's BeginTime and EndTime name). A run that
-- shrinks keeps its row; one split by a late period keeps the older piece, and the newer piece is
-- a new row with the same status, requests and opened_at; one filled completely keeps its row with
-- status 'filled', periods 0 and the range it had when last missing.
CREATE TABLE gaps (
    id                bigserial PRIMARY KEY,
    mn                text COLLATE "C" NOT NULL,
    cn                text COLLATE "C" NOT NULL,
    start_time        timestamptz NOT NULL,
    end_time          timestamptz NOT NULL,
    periods           integer NOT NULL CHECK (periods >= 0),  -- missing now; 0 once filled
    status            text NOT NULL CHECK (status IN ('open', 'requested', 'filled', 'given_up', 'dormant')),
    requests          integer NOT NULL DEFAULT 0,
    reason            text,
    opened_at         timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    last_requested_at timestamptz,
    CHECK (end_time >= start_time)
);
CREATE INDEX gaps_mn_cn_start ON gaps (mn, cn, start_time, id);
CREATE INDEX gaps_unfilled ON gaps (mn) WHERE status <> 'filled';
CREATE INDEX gaps_status_start ON gaps (status, mn, cn, start_time, id);
