-- Rejected rows keep their raw bytes exactly (NUL bytes and invalid UTF-8 included,
-- which a text column cannot hold), next to a readable rendering.
ALTER TABLE rejected_rows RENAME COLUMN raw TO raw_text;
ALTER TABLE rejected_rows ADD COLUMN raw bytea;
UPDATE rejected_rows SET raw = convert_to(raw_text, 'UTF8');
ALTER TABLE rejected_rows ALTER COLUMN raw SET NOT NULL;

-- The per-transaction copy is optional now (TXPIPE_PG_TRANSACTIONS) and bounded: the
-- table is partitioned by the day rows were loaded, and days older than the retention
-- are dropped. An existing unpartitioned table is kept, renamed, for the operator to
-- archive or drop.
ALTER TABLE IF EXISTS transactions RENAME TO transactions_unpartitioned;
ALTER INDEX IF EXISTS transactions_pkey RENAME TO transactions_unpartitioned_pkey;
CREATE TABLE transactions (
    stream          text        NOT NULL,
    chunk           bigint      NOT NULL,
    row_number      bigint      NOT NULL,
    customer_name   text        NOT NULL,
    merchant_id     text        NOT NULL,
    gender          text        NOT NULL,
    amount          numeric(20, 2) NOT NULL,
    weight          numeric,
    raw             bytea       NOT NULL,
    loaded_on       date        NOT NULL,
    PRIMARY KEY (stream, chunk, row_number, loaded_on)
) PARTITION BY RANGE (loaded_on);
-- Catches rows of a day whose partition is missing, so a load never fails for it.
CREATE TABLE transactions_default PARTITION OF transactions DEFAULT;
CREATE INDEX transactions_chunk ON transactions (stream, chunk);
