-- Resends keep history; months are attached without locking out writers.
--
-- data_versions: every value set of a `data` key that is not (or no longer) the stored one.
-- `outcome` says how it got here: `replaced` (it was the stored row and a value set of higher
-- precedence took its place) or `refused` (it arrived and lost to the stored one). Its raw frame
-- is the `raw_frames` row with the same (mn, received_at, qn); the API resolves it.
CREATE TABLE data_versions (
    id            bigserial PRIMARY KEY,
    mn            text COLLATE "C" NOT NULL,
    cn            text COLLATE "C" NOT NULL,
    data_time     timestamptz NOT NULL,
    factor        text COLLATE "C" NOT NULL,
    factor_2017   text,
    rtd           double precision,
    min           double precision,
    avg           double precision,
    max           double precision,
    cou           double precision,
    zs_rtd        double precision,
    zs_min        double precision,
    zs_avg        double precision,
    zs_max        double precision,
    flag          text,
    eflag         text,
    sample_time   timestamptz,
    extra         jsonb,
    qn            text,
    received_at   timestamptz NOT NULL,
    resend        boolean NOT NULL,
    time_suspect  boolean NOT NULL,
    outcome       text NOT NULL CHECK (outcome IN ('replaced', 'refused')),
    superseded_at timestamptz NOT NULL
);
CREATE INDEX data_versions_key ON data_versions (mn, data_time, cn, factor, id);

-- The precedence of a data flag (docs/schema.md, "Resends"): a valid value (flag N, or no flag,
-- as HJ/T 212-2005 devices often send) beats any other flag (F, M, S, D, C, T, B, P, vendor marks).
CREATE FUNCTION data_flag_rank(flag text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT CASE WHEN flag IS NULL OR flag = 'N' THEN 1 ELSE 0 END $$;

-- Merges the writer's temporary `data_stage` (one COPY, in submission order) into `data`; returns
-- the number of keys inserted or whose values were replaced. Per key, the candidates are the
-- stored row and each distinct value set of the batch at its first arrival in it; the winner is the
-- highest (data_flag_rank(flag), received_at, qn), ties to the later written. Every other candidate
-- that differs from the winner goes to data_versions (a refused one only if that value set is not
-- kept already), `revisions` grows by the number of versions added, and `first_received_at` is
-- the earliest arrival seen for the key. The stored rows are locked
-- (FOR UPDATE) before they are compared, so two writers decide by the rows' arrival times, never
-- by their commit order. `data_candidates` is the writer's second temporary table.
CREATE FUNCTION merge_data_stage() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    inserted bigint;
    replaced bigint;
BEGIN
    INSERT INTO data_candidates
    SELECT DISTINCT ON (mn, cn, data_time, factor, factor_2017, rtd, min, avg, max, cou,
                        zs_rtd, zs_min, zs_avg, zs_max, flag, eflag, sample_time, extra)
           mn, cn, data_time, factor, factor_2017, rtd, min, avg, max, cou, zs_rtd, zs_min, zs_avg,
           zs_max, flag, eflag, sample_time, extra, qn, received_at, resend, time_suspect, pos,
           false, false, false
    FROM (SELECT s.*, row_number() OVER (ORDER BY s.ctid) AS pos FROM data_stage s) s
    ORDER BY mn, cn, data_time, factor, factor_2017, rtd, min, avg, max, cou,
             zs_rtd, zs_min, zs_avg, zs_max, flag, eflag, sample_time, extra, received_at, pos;

    -- An arrival identical to the stored row changes nothing (the common resend: an ack was lost).
    -- Read without a lock: if another writer changes the row meanwhile, this arrival counts as
    -- merged before that change, which is what an identical resend would have done then.
    DELETE FROM data_candidates c
    USING data d
    WHERE (d.mn, d.cn, d.data_time, d.factor) = (c.mn, c.cn, c.data_time, c.factor)
      AND (c.factor_2017, c.rtd, c.min, c.avg, c.max, c.cou, c.zs_rtd, c.zs_min, c.zs_avg, c.zs_max,
           c.flag, c.eflag, c.sample_time, c.extra)
          IS NOT DISTINCT FROM
          (d.factor_2017, d.rtd, d.min, d.avg, d.max, d.cou, d.zs_rtd, d.zs_min, d.zs_avg, d.zs_max,
           d.flag, d.eflag, d.sample_time, d.extra);

    -- New keys: the batch's winner goes in. A key a concurrent writer inserted first is waited
    -- for and then handled below with the existing ones.
    WITH w AS (
        SELECT DISTINCT ON (mn, cn, data_time, factor) *,
               min(received_at) OVER (PARTITION BY mn, cn, data_time, factor) AS first
        FROM data_candidates
        ORDER BY mn, cn, data_time, factor, data_flag_rank(flag) DESC, received_at DESC,
                 qn DESC NULLS LAST, pos DESC
    ), ins AS (
        INSERT INTO data AS d (mn, cn, data_time, factor, factor_2017, rtd, min, avg, max, cou, zs_rtd,
                               zs_min, zs_avg, zs_max, flag, eflag, sample_time, extra, qn, received_at,
                               first_received_at, resend, time_suspect, revisions)
        SELECT mn, cn, data_time, factor, factor_2017, rtd, min, avg, max, cou, zs_rtd, zs_min, zs_avg,
               zs_max, flag, eflag, sample_time, extra, qn, received_at, first, resend, time_suspect, 0
        FROM w
        ORDER BY mn, data_time, cn, factor
        ON CONFLICT DO NOTHING
        RETURNING d.mn, d.cn, d.data_time, d.factor
    )
    UPDATE data_candidates c SET fresh = true, win = (c.pos = w.pos)
    FROM ins JOIN w USING (mn, cn, data_time, factor)
    WHERE (c.mn, c.cn, c.data_time, c.factor) = (ins.mn, ins.cn, ins.data_time, ins.factor);
    SELECT count(*) INTO inserted FROM data_candidates WHERE fresh AND win;

    -- Existing keys: lock the stored rows (key order), drop what is identical to them, decide again.
    INSERT INTO data_candidates
    SELECT d.mn, d.cn, d.data_time, d.factor, d.factor_2017, d.rtd, d.min, d.avg, d.max, d.cou,
           d.zs_rtd, d.zs_min, d.zs_avg, d.zs_max, d.flag, d.eflag, d.sample_time, d.extra, d.qn,
           d.received_at, d.resend, d.time_suspect, 0, true, false, false
    FROM data d
    WHERE (d.mn, d.cn, d.data_time, d.factor) IN
          (SELECT mn, cn, data_time, factor FROM data_candidates WHERE NOT fresh)
    ORDER BY d.mn, d.data_time, d.cn, d.factor
    FOR UPDATE OF d;
    DELETE FROM data_candidates c
    USING data_candidates s
    WHERE s.stored AND NOT c.stored AND NOT c.fresh
      AND (c.mn, c.cn, c.data_time, c.factor) = (s.mn, s.cn, s.data_time, s.factor)
      AND (c.factor_2017, c.rtd, c.min, c.avg, c.max, c.cou, c.zs_rtd, c.zs_min, c.zs_avg, c.zs_max,
           c.flag, c.eflag, c.sample_time, c.extra)
          IS NOT DISTINCT FROM
          (s.factor_2017, s.rtd, s.min, s.avg, s.max, s.cou, s.zs_rtd, s.zs_min, s.zs_avg, s.zs_max,
           s.flag, s.eflag, s.sample_time, s.extra);
    -- A stored row left alone (every arrival was identical to it) needs nothing more.
    DELETE FROM data_candidates s
    WHERE s.stored AND NOT EXISTS (
        SELECT 1 FROM data_candidates c
        WHERE NOT c.stored AND (c.mn, c.cn, c.data_time, c.factor) = (s.mn, s.cn, s.data_time, s.factor));
    PERFORM _mark_winners();

    UPDATE data d
    SET factor_2017 = c.factor_2017, rtd = c.rtd, min = c.min, avg = c.avg, max = c.max, cou = c.cou,
        zs_rtd = c.zs_rtd, zs_min = c.zs_min, zs_avg = c.zs_avg, zs_max = c.zs_max, flag = c.flag,
        eflag = c.eflag, sample_time = c.sample_time, extra = c.extra, qn = c.qn,
        received_at = c.received_at, resend = c.resend, time_suspect = c.time_suspect
    FROM data_candidates c
    WHERE c.win AND NOT c.stored AND NOT c.fresh
      AND (d.mn, d.cn, d.data_time, d.factor) = (c.mn, c.cn, c.data_time, c.factor);
    GET DIAGNOSTICS replaced = ROW_COUNT;

    -- Every loser is kept: the replaced stored row always, a refused arrival unless its value
    -- set is among the key's latest 64 versions (a bound, so a device that floods one key with
    -- losing values costs an index range of 64 rows per arrival, not a scan of all it sent).
    -- `revisions` counts them.
    WITH kept AS (
        INSERT INTO data_versions (mn, cn, data_time, factor, factor_2017, rtd, min, avg, max, cou,
                                   zs_rtd, zs_min, zs_avg, zs_max, flag, eflag, sample_time, extra,
                                   qn, received_at, resend, time_suspect, outcome, superseded_at)
        SELECT mn, cn, data_time, factor, factor_2017, rtd, min, avg, max, cou, zs_rtd, zs_min,
               zs_avg, zs_max, flag, eflag, sample_time, extra, qn, received_at, resend, time_suspect,
               CASE WHEN c.stored THEN 'replaced' ELSE 'refused' END, now()
        FROM data_candidates c
        WHERE NOT c.win AND (c.stored OR NOT EXISTS (
            SELECT 1 FROM (SELECT * FROM data_versions r
                           WHERE (r.mn, r.cn, r.data_time, r.factor) = (c.mn, c.cn, c.data_time, c.factor)
                           ORDER BY r.id DESC LIMIT 64) v
            WHERE (v.factor_2017, v.rtd, v.min, v.avg, v.max, v.cou, v.zs_rtd, v.zs_min, v.zs_avg,
                   v.zs_max, v.flag, v.eflag, v.sample_time, v.extra)
                  IS NOT DISTINCT FROM
                  (c.factor_2017, c.rtd, c.min, c.avg, c.max, c.cou, c.zs_rtd, c.zs_min, c.zs_avg,
                   c.zs_max, c.flag, c.eflag, c.sample_time, c.extra)))
        ORDER BY mn, data_time, cn, factor, received_at
        RETURNING mn, cn, data_time, factor
    ), counted AS (
        SELECT mn, cn, data_time, factor, count(*) AS added FROM kept GROUP BY mn, cn, data_time, factor
    ), earliest AS (
        SELECT mn, cn, data_time, factor, min(received_at) AS first
        FROM data_candidates GROUP BY mn, cn, data_time, factor
    )
    UPDATE data d
    SET revisions = d.revisions + counted.added, first_received_at = least(d.first_received_at, earliest.first)
    FROM counted JOIN earliest USING (mn, cn, data_time, factor)
    WHERE (d.mn, d.cn, d.data_time, d.factor) = (counted.mn, counted.cn, counted.data_time, counted.factor);
    RETURN inserted + replaced;
END;
$$;

-- Sets data_candidates.win on the one candidate per key with the highest precedence, for the keys
-- not inserted by this merge yet (they are decided when inserted). (PL/pgSQL,
-- not SQL: its body names the writer's temporary table, which does not exist at migration time.)
CREATE FUNCTION _mark_winners() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE data_candidates c SET win = (c.pos = w.pos AND c.stored = w.stored)
    FROM (SELECT DISTINCT ON (mn, cn, data_time, factor) mn, cn, data_time, factor, pos, stored
          FROM data_candidates WHERE NOT fresh
          ORDER BY mn, cn, data_time, factor, data_flag_rank(flag) DESC, received_at DESC,
                   qn DESC NULLS LAST, pos DESC) w
    WHERE NOT c.fresh AND (c.mn, c.cn, c.data_time, c.factor) = (w.mn, w.cn, w.data_time, w.factor);
END;
$$;

-- A month partition is created standalone, filled with the rows the DEFAULT partition holds for
-- that month (DataTimes outside the tolerance window are stored there until then), and attached.
-- ATTACH PARTITION takes SHARE UPDATE EXCLUSIVE on the parent, so writers and readers of other
-- months go on; CREATE TABLE ... PARTITION OF took ACCESS EXCLUSIVE. Only the DEFAULT partition is
-- locked exclusively, for its scan, and only the parents `data` and `raw_frames` are accepted.
CREATE OR REPLACE FUNCTION ensure_month_partition(parent text, at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    month_end   timestamptz := (date_trunc('month', at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    part_name   text := format('%s_p%s', parent, to_char(at AT TIME ZONE 'UTC', 'YYYY_MM'));
    key_column  text := CASE parent WHEN 'data' THEN 'data_time' WHEN 'raw_frames' THEN 'received_at' END;
    parent_schema text;
BEGIN
    IF key_column IS NULL THEN
        RAISE EXCEPTION 'ensure_month_partition: unknown parent %', parent;
    END IF;
    parent_schema := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.oid = parent::regclass);
    IF to_regclass(format('%I.%I', parent_schema, part_name)) IS NOT NULL THEN
        RETURN part_name;
    END IF;
    PERFORM pg_advisory_xact_lock(7526411283921408001);
    -- A replica may have created it while we waited: a catalog query (a fresh snapshot) sees that,
    -- to_regclass's cached catalog lookup may not.
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = parent_schema AND c.relname = part_name) THEN
        RETURN part_name;
    END IF;
    -- Locked before its rows move: a writer routing a row of this month into it meanwhile would
    -- make the attach fail (and its batch with it).
    EXECUTE format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', parent_schema, parent || '_default');
    EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS)',
                   parent_schema, part_name, parent_schema, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %1$I.%2$I WHERE %3$I >= %4$L AND %3$I < %5$L RETURNING *) '
                   'INSERT INTO %1$I.%6$I SELECT * FROM moved',
                   parent_schema, parent || '_default', key_column, month_start, month_end, part_name);
    EXECUTE format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                   parent_schema, parent, parent_schema, part_name, month_start, month_end);
    RETURN part_name;
END;
$$;
