-- ANALYZE samples 300 × the statistics target rows. At PostgreSQL's default (100), analysing
-- these five tables, which every checkout inserts into, read ~30,000 rows each from random
-- pages: 0.7–0.9 s of work that autovacuum runs all at once when they cross its threshold
-- together, and that stalled checkouts beside it (p99 of an open loop at 700/s: 156–706 ms
-- with ANALYZE at 100, 30–103 ms at 10; docs/PERFORMANCE.md). Every query on them goes by
-- key or a selective index, which ten histogram buckets and ten common values plan as well.
-- A column added to one of these tables later should get the same target (a test checks).
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT c.relname, a.attname
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace = current_schema()::regnamespace
          AND c.relname IN ('orders', 'order_lines', 'transfers', 'idempotency_keys', 'open_holds')
          AND a.attnum > 0 AND NOT a.attisdropped
    LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I SET STATISTICS 10', col.relname, col.attname);
    END LOOP;
END
$$;
