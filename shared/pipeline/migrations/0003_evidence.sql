-- Why each detection fired: the values that made its pattern's condition true at its
-- chunk (docs/behaviour.md#evidence), every value an exact string. NULL only for
-- detections published before evidence was kept.
ALTER TABLE detections ADD COLUMN IF NOT EXISTS evidence jsonb;
