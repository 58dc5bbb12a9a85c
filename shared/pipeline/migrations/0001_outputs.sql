-- txpipe outputs. Every table is keyed so that writing a chunk again leaves the same rows.

-- docs/behaviour.md (detections, outputs): each detection once per stream, with the chunk that produced it.
CREATE TABLE IF NOT EXISTS detections (
    stream          text        NOT NULL,
    pattern_id      text        NOT NULL,
    merchant_id     text        NOT NULL,
    customer_name   text        NOT NULL DEFAULT '',
    action_type     text        NOT NULL,
    chunk           bigint      NOT NULL,
    seq_in_chunk    integer     NOT NULL,
    y_start_time    timestamptz NOT NULL,
    detection_time  timestamptz NOT NULL,
    PRIMARY KEY (stream, pattern_id, merchant_id, customer_name)
);
CREATE INDEX IF NOT EXISTS detections_order ON detections (stream, chunk, seq_in_chunk);

-- One row per processed chunk.
CREATE TABLE IF NOT EXISTS chunks (
    stream          text        NOT NULL,
    chunk           bigint      NOT NULL,
    key             text        NOT NULL,
    rows            bigint      NOT NULL,
    rejected        bigint      NOT NULL,
    detections      bigint      NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    PRIMARY KEY (stream, chunk)
);

-- Rows that were not used, with the reason. `file` is 'transactions' (then `source` is
-- the stream and `chunk` is set) or 'importance' (then `source` is the object key).
CREATE TABLE IF NOT EXISTS rejected_rows (
    file            text        NOT NULL,
    source          text        NOT NULL,
    row_number      bigint      NOT NULL,
    chunk           bigint,
    raw             text        NOT NULL,
    reason          text        NOT NULL,
    PRIMARY KEY (file, source, row_number)
);

-- Every valid transaction with its importance weight (NULL when the pair has none).
CREATE TABLE IF NOT EXISTS transactions (
    stream          text        NOT NULL,
    chunk           bigint      NOT NULL,
    row_number      bigint      NOT NULL,
    customer_name   text        NOT NULL,
    merchant_id     text        NOT NULL,
    gender          text        NOT NULL,
    amount          numeric(20, 2) NOT NULL,
    weight          numeric,
    raw             text        NOT NULL,
    PRIMARY KEY (stream, chunk, row_number)
);

-- Running stats per (customer, merchant), as of `last_chunk`.
CREATE TABLE IF NOT EXISTS customer_stats (
    stream          text        NOT NULL,
    merchant_id     text        NOT NULL,
    customer_name   text        NOT NULL,
    txns            bigint      NOT NULL,
    amount          numeric(24, 2) NOT NULL,
    avg_amount      numeric(24, 6) NOT NULL,
    gender          text        NOT NULL,
    weight          numeric,
    last_chunk      bigint      NOT NULL,
    PRIMARY KEY (stream, merchant_id, customer_name)
);
