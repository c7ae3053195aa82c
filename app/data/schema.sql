-- City Service Heat store schema. Timestamps are TIMESTAMPTZ in UTC, coordinates WGS84 lon/lat
-- (NULL when the provider gave none: such rows are kept, with tract_id NULL). Ids are stable:
-- id = source || ':' || source_id. Rows are never deleted: valid_to marks a soft delete.
CREATE TABLE IF NOT EXISTS request (
    id VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, source_id VARCHAR NOT NULL, city VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL, category VARCHAR NOT NULL, descriptor VARCHAR,
    lon DOUBLE, lat DOUBLE, tract_id VARCHAR, attrs JSON,
    valid_from TIMESTAMPTZ NOT NULL, valid_to TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS incident (
    id VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, source_id VARCHAR NOT NULL, city VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL, type VARCHAR NOT NULL, severity SMALLINT,
    lon DOUBLE, lat DOUBLE, tract_id VARCHAR, attrs JSON,
    valid_from TIMESTAMPTZ NOT NULL, valid_to TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS closure (
    id VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, source_id VARCHAR NOT NULL, city VARCHAR NOT NULL,
    start_ts TIMESTAMPTZ NOT NULL, end_ts TIMESTAMPTZ, kind VARCHAR NOT NULL, description VARCHAR,
    lon DOUBLE, lat DOUBLE, tract_id VARCHAR, attrs JSON,
    valid_from TIMESTAMPTZ NOT NULL, valid_to TIMESTAMPTZ
);
-- Geography: one row per unit; parent_id climbs tract -> neighborhood -> borough -> city.
CREATE TABLE IF NOT EXISTS geo_unit (
    city VARCHAR NOT NULL, level VARCHAR NOT NULL, unit_id VARCHAR NOT NULL, name VARCHAR NOT NULL,
    parent_id VARCHAR, lon DOUBLE NOT NULL, lat DOUBLE NOT NULL, geom_wkb BLOB NOT NULL,
    PRIMARY KEY (city, level, unit_id)
);
-- Anomalies found by the engine; unit_id is a tract id at level 'tract' (the model's tract_id).
CREATE TABLE IF NOT EXISTS anomaly (
    city VARCHAR NOT NULL, level VARCHAR NOT NULL, unit_id VARCHAR NOT NULL, category VARCHAR NOT NULL,
    window_start TIMESTAMPTZ NOT NULL, window_end TIMESTAMPTZ NOT NULL, zscore DOUBLE NOT NULL, evidence JSON
);
CREATE TABLE IF NOT EXISTS ingest_state (
    source VARCHAR PRIMARY KEY, "cursor" VARCHAR, etag VARCHAR, last_modified VARCHAR,
    last_success TIMESTAMPTZ, consecutive_failures INTEGER NOT NULL DEFAULT 0, drift JSON
);
CREATE TABLE IF NOT EXISTS snapshot_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
-- Added with real-source ingest (kept as ALTERs so older working databases upgrade in place).
ALTER TABLE ingest_state ADD COLUMN IF NOT EXISTS breaker_opened_at TIMESTAMPTZ;
ALTER TABLE ingest_state ADD COLUMN IF NOT EXISTS last_error VARCHAR;
ALTER TABLE ingest_state ADD COLUMN IF NOT EXISTS rows_total BIGINT DEFAULT 0;
ALTER TABLE ingest_state ADD COLUMN IF NOT EXISTS unlocated_total BIGINT DEFAULT 0;
-- The release and the score of every cell, computed once when a snapshot is published
-- (app/engine/publish.py); readers only filter, sort and sum these.
CREATE TABLE IF NOT EXISTS release_cell (
    city VARCHAR NOT NULL, level VARCHAR NOT NULL, grain VARCHAR NOT NULL, unit_id VARCHAR NOT NULL, parent_id VARCHAR,
    category VARCHAR NOT NULL, bin_start TIMESTAMPTZ NOT NULL, count BIGINT, suppressed BOOLEAN NOT NULL, partial BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS score_cell (
    city VARCHAR NOT NULL, level VARCHAR NOT NULL, grain VARCHAR NOT NULL, unit_id VARCHAR NOT NULL, category VARCHAR NOT NULL,
    bin_start TIMESTAMPTZ NOT NULL, observed BIGINT, expected DOUBLE, variance DOUBLE, baseline_days DOUBLE, scored BOOLEAN NOT NULL,
    reason VARCHAR, p DOUBLE, zscore DOUBLE, q DOUBLE, p_low DOUBLE, z_low DOUBLE, q_low DOUBLE
);
CREATE TABLE IF NOT EXISTS release_meta (
    city VARCHAR PRIMARY KEY, mode VARCHAR NOT NULL, k INTEGER NOT NULL, epsilon DOUBLE, grains JSON NOT NULL, timezone VARCHAR NOT NULL,
    history_start TIMESTAMPTZ, horizon TIMESTAMPTZ, computed_at TIMESTAMPTZ NOT NULL
);
-- Rows without a usable point but with a known neighborhood-level unit (e.g. a Chicago community area).
ALTER TABLE request ADD COLUMN IF NOT EXISTS area_id VARCHAR;
ALTER TABLE incident ADD COLUMN IF NOT EXISTS area_id VARCHAR;
ALTER TABLE closure ADD COLUMN IF NOT EXISTS area_id VARCHAR;
