-- hj212gw initial schema. Runs with search_path set to the gateway's schema;
-- every name below is unqualified on purpose so one database can hold several schemas.

CREATE TABLE devices (
    mn               text PRIMARY KEY,
    protocol_version smallint,
    st               text,
    first_seen       timestamptz,
    last_seen        timestamptz,
    last_peer        text,
    name             text,
    site             text,
    enabled          boolean NOT NULL DEFAULT true,
    status           text NOT NULL DEFAULT 'accepted'
                     CHECK (status IN ('accepted', 'quarantined', 'rejected')),
    pw               text,
    heartbeat_reply  text CHECK (heartbeat_reply IN ('9013', '9014', 'none')),
    crc_variants     text[] NOT NULL DEFAULT '{}'
);

CREATE TABLE connections (
    id              bigserial PRIMARY KEY,
    gateway_id      text NOT NULL,
    mn              text,
    peer            text NOT NULL,
    connected_at    timestamptz NOT NULL,
    disconnected_at timestamptz,
    close_reason    text,
    frames_ok       integer NOT NULL DEFAULT 0,
    frames_rejected integer NOT NULL DEFAULT 0
);
CREATE INDEX connections_mn_connected_at ON connections (mn, connected_at DESC);
CREATE INDEX connections_open ON connections (gateway_id) WHERE disconnected_at IS NULL;

CREATE TABLE raw_frames (
    id            bigserial,
    received_at   timestamptz NOT NULL,
    connection_id bigint,
    peer          text,
    mn            text,
    cn            text,
    qn            text,
    verdict       text NOT NULL,
    tolerances    text[] NOT NULL DEFAULT '{}',
    raw           bytea NOT NULL,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE TABLE raw_frames_default PARTITION OF raw_frames DEFAULT;
CREATE INDEX raw_frames_received_at_brin ON raw_frames USING brin (received_at);
CREATE INDEX raw_frames_mn_received_at ON raw_frames (mn, received_at DESC);

CREATE TABLE data (
    mn                text NOT NULL,
    cn                text NOT NULL,
    data_time         timestamptz NOT NULL,
    factor            text NOT NULL,
    factor_2017       text,
    rtd               double precision,
    min               double precision,
    avg               double precision,
    max               double precision,
    cou               double precision,
    zs_rtd            double precision,
    zs_min            double precision,
    zs_avg            double precision,
    zs_max            double precision,
    flag              text,
    eflag             text,
    sample_time       timestamptz,
    extra             jsonb,
    values_text       jsonb NOT NULL,
    qn                text,
    received_at       timestamptz NOT NULL,
    first_received_at timestamptz NOT NULL,
    resend            boolean NOT NULL DEFAULT false,
    revisions         integer NOT NULL DEFAULT 0,
    time_suspect      boolean NOT NULL DEFAULT false,
    -- Key order (mn, data_time, ...) also serves "latest per device": no second B-tree to maintain.
    PRIMARY KEY (mn, data_time, cn, factor)
) PARTITION BY RANGE (data_time);
-- Safety net only: ensure_month_partition() creates the real month before any insert.
CREATE TABLE data_default PARTITION OF data DEFAULT;
CREATE INDEX data_data_time_brin ON data USING brin (data_time);

-- Creates the month partition of `parent` (data or raw_frames) holding `at`, if missing.
-- Serialised by a transaction advisory lock so replicas racing on the same month are safe.
-- Month bounds are UTC. Returns the partition name.
CREATE FUNCTION ensure_month_partition(parent text, at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    month_end   timestamptz := (date_trunc('month', at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    part_name   text := format('%s_p%s', parent, to_char(at AT TIME ZONE 'UTC', 'YYYY_MM'));
    parent_schema text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE c.oid = parent::regclass);
BEGIN
    IF to_regclass(format('%I.%I', parent_schema, part_name)) IS NOT NULL THEN
        RETURN part_name;
    END IF;
    PERFORM pg_advisory_xact_lock(7526411283921408001);
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                   parent_schema, part_name, parent_schema, parent, month_start, month_end);
    RETURN part_name;
END;
$$;
