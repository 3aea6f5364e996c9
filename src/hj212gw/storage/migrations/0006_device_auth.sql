-- Devices are authenticated by default (issue 9). `pw` is pinned on first use (trust on first
-- use) or set by an operator (`hj212gw devices add|set-pw|import`); `pw_source` and `pw_set_at`
-- say which and when, so an operator can audit every pin. `tags` group devices for operators.
-- Existing PWs were entered by operators (the gateway never wrote one before this migration).
ALTER TABLE devices ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
ALTER TABLE devices ADD COLUMN pw_source text CHECK (pw_source IN ('first_use', 'operator'));
ALTER TABLE devices ADD COLUMN pw_set_at timestamptz;
UPDATE devices SET pw_source = 'operator' WHERE pw IS NOT NULL;
