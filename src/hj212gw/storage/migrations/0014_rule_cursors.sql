-- Where the leader's scans of append-only tables stand (issue 13): `data_versions` for the
-- value_revised rule. One row per scan; a newly elected replica continues from it, so a revision
-- recorded while leadership moved is judged once, not never and not twice.
CREATE TABLE rule_cursors (
    name        text PRIMARY KEY,
    last_id     bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
