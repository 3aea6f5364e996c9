-- Alerts (issue 13, docs/alerts.md): every alert the rules raised, firing or resolved, with its
-- acknowledgement; and the outbox the sinks (MQTT, Alertmanager, webhook) deliver from. An alert
-- change and its outbox entry are written in one transaction, so no change is ever lost between
-- PostgreSQL and the broker. At most one alert per fingerprint fires at a time (unique partial
-- index): two replicas that see the same condition raise it once.
CREATE TABLE alerts (
    id               bigserial PRIMARY KEY,
    fingerprint      text COLLATE "C" NOT NULL,
    rule             text COLLATE "C" NOT NULL,
    severity         text NOT NULL CHECK (severity IN ('critical', 'warning', 'info')),
    mn               text COLLATE "C" NOT NULL,
    factor           text COLLATE "C" NOT NULL DEFAULT '',
    detail           text COLLATE "C" NOT NULL DEFAULT '',
    labels           jsonb NOT NULL DEFAULT '{}',     -- site, tags … from the registry
    summary_zh       text NOT NULL,
    summary_en       text NOT NULL,
    article          text NOT NULL DEFAULT '',
    value            double precision,
    threshold        double precision,
    details          jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL CHECK (status IN ('firing', 'resolved')),
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz,
    updated_at       timestamptz NOT NULL,
    reminded_at      timestamptz,
    acked_at         timestamptz,
    acked_by         text,
    ack_note         text,
    gateway_id       text                              -- the replica that raised it
);
CREATE UNIQUE INDEX alerts_firing_fingerprint ON alerts (fingerprint) WHERE status = 'firing';
CREATE INDEX alerts_mn_id ON alerts (mn, id);
CREATE INDEX alerts_rule_id ON alerts (rule, id);
CREATE INDEX alerts_starts_at ON alerts (starts_at);

-- One entry per alert change to deliver: `type` firing | resolved | acknowledged | reminder.
-- `event_id` is the CloudEvents id (consumers dedupe by it); `payload` the event's `data`.
-- Delivery order is (txid, id), not id: a sink reads only entries whose transaction is older than
-- every transaction still running (txid < pg_snapshot_xmin(pg_current_snapshot())), so all of
-- them are committed, and any entry that commits later has a greater txid. A cursor on (txid, id)
-- therefore never skips an entry whose id was taken before, but committed after, another's.
CREATE TABLE alert_outbox (
    id          bigserial PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    alert_id    bigint NOT NULL,
    type        text NOT NULL CHECK (type IN ('firing', 'resolved', 'acknowledged', 'reminder')),
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX alert_outbox_delivery_order ON alert_outbox (txid, id);
CREATE INDEX alert_outbox_created_at ON alert_outbox (created_at);

-- Each sink's position in the outbox: every entry at or before (last_txid, last_id) in delivery
-- order was delivered (PUBACK, 2xx).
CREATE TABLE alert_sink_cursors (
    sink        text PRIMARY KEY,
    last_txid   xid8 NOT NULL DEFAULT '0',
    last_id     bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
