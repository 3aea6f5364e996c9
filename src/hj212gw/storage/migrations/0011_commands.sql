-- commands: every platform->DAS command an operator (API, CLI) or the gateway itself (backfill)
-- asked for, with its state and the data it returned. A row is inserted `queued` and announced
-- (NOTIFY); the replica whose live connection holds the MN claims it (`sent`) and follows it to
-- a final state. A queued row nobody claims within the offline timeout ends `device_offline`,
-- so a command is never sent later by surprise. `params` holds the CP items as requested
-- (secret items such as NewPW are masked wherever they are shown); `result` is bounded: the CP
-- items of a get answer, or for a history fetch the packets and rows it brought back.
CREATE TABLE commands (
    id              bigserial PRIMARY KEY,
    mn              text COLLATE "C" NOT NULL,
    cn              text COLLATE "C" NOT NULL,
    name            text NOT NULL,
    params          jsonb NOT NULL DEFAULT '{}',
    over_time_s     real,            -- null: the gateway's commands.over_time_s
    re_count        integer,         -- null: the gateway's commands.re_count
    qn              text,
    state           text NOT NULL DEFAULT 'queued' CHECK (state IN (
                        'queued', 'sent', 'acknowledged', 'succeeded', 'failed', 'timed_out', 'refused',
                        'device_offline')),
    gateway_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    acknowledged_at timestamptz,
    finished_at     timestamptz,
    qn_rtn          integer,
    exe_rtn         integer,
    reason          text,
    result          jsonb,
    requested_by    text,
    purpose         text,            -- e.g. 'backfill'; null for an operator's command
    gap_id          bigint           -- the gap a backfill request is for (no foreign key: gaps come and go)
);
CREATE INDEX commands_mn_id ON commands (mn, id);
CREATE INDEX commands_queued ON commands (created_at) WHERE state = 'queued';
CREATE INDEX commands_open ON commands (gateway_id) WHERE state IN ('sent', 'acknowledged');
