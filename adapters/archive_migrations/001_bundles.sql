-- The archive of settled bundles (adapters/archive.py): one row per bundle, its document as
-- JSONB with its history and drift findings beside it, and an index for each way the doors
-- search (bundle id, booking id, customer email, correlation id, status pages, tenant).
CREATE TABLE IF NOT EXISTS bundles (
    vip_bundle_id   text PRIMARY KEY,
    booking_id      text NOT NULL,
    customer_email  text NOT NULL,          -- lower-cased: searched in any case
    correlation_id  text NOT NULL,
    tenant          text,                   -- when the document names one
    status          text NOT NULL,
    settled_at      timestamptz NOT NULL,
    archived_at     timestamptz NOT NULL DEFAULT now(),
    -- Set when the bundle went back to Redis (a cancel of an archived finalized bundle); the
    -- row is replaced when it is archived again. Lists and searches skip restored rows.
    restored_at     timestamptz,
    version         integer NOT NULL,
    doc             jsonb NOT NULL,         -- the bundle without history and drift
    history         jsonb NOT NULL,
    drift           jsonb NOT NULL,
    starts          jsonb NOT NULL DEFAULT '{}'::jsonb  -- the step start counters
);
CREATE INDEX IF NOT EXISTS bundles_booking_id ON bundles (booking_id);
CREATE INDEX IF NOT EXISTS bundles_customer_email ON bundles (customer_email);
CREATE INDEX IF NOT EXISTS bundles_correlation_id ON bundles (correlation_id);
CREATE INDEX IF NOT EXISTS bundles_status_settled ON bundles (status, settled_at DESC)
    WHERE restored_at IS NULL;
CREATE INDEX IF NOT EXISTS bundles_settled ON bundles (settled_at) WHERE restored_at IS NULL;
CREATE INDEX IF NOT EXISTS bundles_tenant ON bundles (tenant, status, settled_at DESC)
    WHERE tenant IS NOT NULL;
