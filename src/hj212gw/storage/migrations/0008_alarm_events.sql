-- alarm_events: alarm uploads (HJ/T 212-2005 CN 2072, or any upload that carries `AlarmTime`
-- instead of `DataTime`), one row per factor, at the alarm's own time. Written in the same batch
-- transaction as the packet's raw frame, so the 9014 still means "stored". A resend of the same
-- alarm (same device, CN, AlarmTime, factor and AlarmType) keeps the first arrival
-- (`ON CONFLICT DO NOTHING`); its raw frame in `raw_frames` records that it arrived again.
-- The raw frame of a row is the `raw_frames` row of the same mn, received_at and qn.
CREATE TABLE alarm_events (
    id          bigserial UNIQUE,
    mn          text COLLATE "C" NOT NULL,
    cn          text COLLATE "C" NOT NULL,
    alarm_time  timestamptz NOT NULL,
    factor      text COLLATE "C" NOT NULL,
    alarm_type  text COLLATE "C" NOT NULL,  -- '' when the upload carries none
    value       double precision,           -- `<factor>-Ala` when it is a finite number
    fields      jsonb NOT NULL,             -- the factor's fields as sent: {"Ala": "16.00", ...}
    qn          text,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (mn, cn, alarm_time, factor, alarm_type)
);
CREATE INDEX alarm_events_mn_alarm_time ON alarm_events (mn, alarm_time, factor, id);
