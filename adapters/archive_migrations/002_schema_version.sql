-- The schema version of each archived document (process_manager/versions.py), read from the
-- document itself: a release before 0.2.0 writes rows without knowing this column, and its
-- documents carry no version (1). Lets an operator see when no row of an old shape is left
-- (README, "Upgrading": a shape is dropped only then).
ALTER TABLE bundles ADD COLUMN IF NOT EXISTS schema_version integer
    GENERATED ALWAYS AS (coalesce((doc ->> 'schema_version')::integer, 1)) STORED;
CREATE INDEX IF NOT EXISTS bundles_schema_version ON bundles (schema_version);
