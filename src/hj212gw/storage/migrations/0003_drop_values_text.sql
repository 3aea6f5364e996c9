-- data.values_text (every per-factor field as sent, as jsonb) is dropped. It repeated what the
-- number columns, flag, eflag and extra hold, and the exact bytes of every frame stay in
-- raw_frames; building and parsing it was about a fifth of PostgreSQL's cost per data row and
-- a tenth of the gateway's. Values that are not finite numbers (vendor marks, NaN, Infinity) are
-- kept as text in `extra`, so no value a device sent is lost from `data` either.
ALTER TABLE data DROP COLUMN values_text;
