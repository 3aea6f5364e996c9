-- split_parts: the parts of split transfers (HJ 212-2017 §9.3, Flag bit D, PNUM/PNO), written in
-- the same batch transaction as each part's raw frame, so a part's 9014 still means "stored"
-- even when the part does not stand alone. A transfer is (mn, cn, qn, pnum); its parts are
-- assembled from here once all PNO 1..PNUM are present (any replica, any connection), then
-- marked `assembled_at` and deleted by the sweep after `protocol.split_timeout_s`, like every
-- transfer still incomplete by then.
CREATE TABLE split_parts (
    mn            text COLLATE "C" NOT NULL,
    cn            text COLLATE "C" NOT NULL,
    qn            text COLLATE "C" NOT NULL,
    pnum          integer NOT NULL,
    pno           integer NOT NULL,
    fragment      boolean NOT NULL,
    backfill      boolean NOT NULL DEFAULT false,
    received_at   timestamptz NOT NULL,
    connection_id bigint,
    segment       bytea NOT NULL,
    assembled_at  timestamptz,
    PRIMARY KEY (mn, cn, qn, pnum, pno),
    CHECK (pno BETWEEN 1 AND pnum)
);
CREATE INDEX split_parts_received_at ON split_parts (received_at);
-- The transfers that may need assembling: most rows are standalone parts (stored as data anyway),
-- so the periodic "any complete transfer?" sweep starts from this small partial index.
CREATE INDEX split_parts_open_fragments ON split_parts (mn, cn, qn, pnum) WHERE fragment AND assembled_at IS NULL;
