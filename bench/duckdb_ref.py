"""The same incremental job as the engine, done by DuckDB on the same chunks: the yardstick
`bench/run.sh` measures txpipe against.

Per chunk of R rows (file order, as the chunker cuts them): upsert the per-pair counts and
sums (a pair's gender is its first row's), the per-merchant counts and female/male
customers, then evaluate CHILD and DEI-NEEDED for what the chunk touched, each emitted once.
UPGRADE (percentiles over every customer of a merchant) is left out, so the job is smaller
than the engine's. One thread, like the engine's figure.

Prints one `key=value` line: load and chunk seconds, and the detections found, which must
equal the engine's PatId2 / PatId3 counts (the script checks nothing itself; run.sh does).

Usage: python duckdb_ref.py DATA_DIR [ROWS_PER_CHUNK]
The thresholds come from the environment (`TXPIPE_CHILD_MIN_TXNS`,
`TXPIPE_CHILD_AVG_BELOW_CENTS`, `TXPIPE_DEI_MIN_FEMALE`), which run.sh sets from
`txpipe patterns --env`: the values the engine runs with, never restated here.
"""

import os
import sys
import time

import duckdb


def main() -> None:
    data = sys.argv[1]
    rows_per_chunk = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    child_min = int(os.environ["TXPIPE_CHILD_MIN_TXNS"])
    child_below = int(os.environ["TXPIPE_CHILD_AVG_BELOW_CENTS"])
    dei_min = int(os.environ["TXPIPE_DEI_MIN_FEMALE"])
    con = duckdb.connect()
    con.execute("SET threads TO 1")
    con.execute("SET preserve_insertion_order TO true")

    started = time.perf_counter()
    # Amounts as exact decimals, ids unquoted ('C123' means C123), rows numbered in file
    # order.
    con.execute(
        """
        CREATE TABLE tx AS
        SELECT row_number() OVER () AS rn, customer AS c, merchant AS m, gender AS g,
               CAST(amount * 100 AS BIGINT) AS cents
        FROM read_csv(?, header = true, quote = '''', escape = '''',
                      columns = {'step': 'VARCHAR', 'customer': 'VARCHAR', 'age': 'VARCHAR',
                                 'gender': 'VARCHAR', 'zipcodeOri': 'VARCHAR',
                                 'merchant': 'VARCHAR', 'zipMerchant': 'VARCHAR',
                                 'category': 'VARCHAR', 'amount': 'DECIMAL(15,2)',
                                 'fraud': 'VARCHAR'})
        """,
        [f"{data}/transactions.csv"],
    )
    rows = con.execute("SELECT count(*) FROM tx").fetchone()[0]
    load = time.perf_counter() - started

    con.execute(
        "CREATE TABLE pairs (m VARCHAR, c VARCHAR, n BIGINT, s HUGEINT, g VARCHAR,"
        " PRIMARY KEY (m, c))"
    )
    con.execute(
        "CREATE TABLE merchants (m VARCHAR PRIMARY KEY, n BIGINT, f BIGINT, male BIGINT)"
    )
    con.execute("CREATE TABLE emitted (p VARCHAR, m VARCHAR, c VARCHAR)")
    started = time.perf_counter()
    for first in range(1, rows + 1, rows_per_chunk):
        last = first + rows_per_chunk - 1
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE chunk AS
            SELECT m, c, count(*) AS n, sum(cents) AS s, arg_min(g, rn) AS g
            FROM tx WHERE rn BETWEEN ? AND ? GROUP BY m, c
            """,
            [first, last],
        )
        # Female/male customers are counted when a pair first appears.
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE fresh AS
            SELECT ch.m, count(*) FILTER (WHERE ch.g = 'F') AS f,
                   count(*) FILTER (WHERE ch.g = 'M') AS male
            FROM chunk ch ANTI JOIN pairs p ON p.m = ch.m AND p.c = ch.c
            GROUP BY ch.m
            """
        )
        con.execute(
            """
            INSERT INTO pairs SELECT m, c, n, s, g FROM chunk
            ON CONFLICT (m, c) DO UPDATE SET n = n + EXCLUDED.n, s = s + EXCLUDED.s
            """
        )
        con.execute(
            """
            INSERT INTO merchants
            SELECT ch.m, sum(ch.n), coalesce(any_value(fr.f), 0), coalesce(any_value(fr.male), 0)
            FROM chunk ch LEFT JOIN fresh fr ON fr.m = ch.m GROUP BY ch.m
            ON CONFLICT (m) DO UPDATE SET n = n + EXCLUDED.n, f = f + EXCLUDED.f,
                                          male = male + EXCLUDED.male
            """
        )
        con.execute(
            """
            INSERT INTO emitted
            SELECT 'PatId2', p.m, p.c FROM pairs p SEMI JOIN chunk ch ON p.m = ch.m AND p.c = ch.c
            WHERE p.n >= ? AND p.s < CAST(? AS HUGEINT) * p.n
              AND NOT EXISTS (SELECT 1 FROM emitted e
                              WHERE e.p = 'PatId2' AND e.m = p.m AND e.c = p.c)
            """,
            [child_min, child_below],
        )
        con.execute(
            """
            INSERT INTO emitted
            SELECT 'PatId3', me.m, '' FROM merchants me
            SEMI JOIN (SELECT DISTINCT m FROM chunk) t ON t.m = me.m
            WHERE me.f > ? AND me.f < me.male
              AND NOT EXISTS (SELECT 1 FROM emitted e WHERE e.p = 'PatId3' AND e.m = me.m)
            """,
            [dei_min],
        )
    chunks = time.perf_counter() - started
    child, dei = con.execute(
        "SELECT count(*) FILTER (WHERE p = 'PatId2'), count(*) FILTER (WHERE p = 'PatId3')"
        " FROM emitted"
    ).fetchone()
    pairs = con.execute("SELECT count(*) FROM pairs").fetchone()[0]
    print(
        f"duckdb rows={rows} pairs={pairs} load_s={load:.3f} chunks_s={chunks:.3f}"
        f" child={child} dei={dei} version={duckdb.__version__}"
    )


if __name__ == "__main__":
    main()
