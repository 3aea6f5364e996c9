-- Alerts listed by status, newest first (GET /api/v1/alerts?status=firing, `hj212gw alerts
-- --status firing`, the reminders of firing alerts): without it a few firing alerts are found by
-- walking the whole history backwards.
CREATE INDEX alerts_status_id ON alerts (status, id);
