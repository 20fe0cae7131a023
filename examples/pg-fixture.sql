-- A PostgreSQL database with every kind of object freezer's PostgreSQL dumps promise to
-- keep (tests/it/postgres.rs): schemas (one with a non-ASCII name), an extension and its
-- type, enum, domain and composite types, tables with and without a primary key,
-- partitioned, inherited, unlogged, with identity, generated and array/jsonb/bytea/
-- numeric/timestamptz columns, NULL next to '', sequences, views, a materialized view,
-- functions, a procedure, a trigger, comments, constraints and indexes.
CREATE EXTENSION IF NOT EXISTS citext;
CREATE SCHEMA "Läden";
COMMENT ON SCHEMA "Läden" IS 'Geschäfte und ihre Bestellungen';

CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'überglücklich');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TYPE address AS (street text, city text, zip varchar(10));

CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email citext UNIQUE,
    mood mood,
    note text,
    created timestamptz NOT NULL,
    balance numeric(14, 4),
    tags text[],
    profile jsonb,
    avatar bytea,
    addr address
);
COMMENT ON TABLE customers IS 'Kunden — people who buy';
COMMENT ON COLUMN customers.note IS 'NULL and the empty string are different';

CREATE TABLE orders (
    id serial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    amount numeric(12, 2) NOT NULL CHECK (amount >= 0),
    status mood NOT NULL DEFAULT 'ok',
    placed_at timestamptz NOT NULL,
    updated_at timestamptz
);
CREATE INDEX orders_by_customer ON orders (customer_id, placed_at DESC);

CREATE TABLE "Läden"."Bestellpositionen" (
    "Bestellung" integer NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    "Zeile" smallint NOT NULL,
    "Menge" positive_int NOT NULL,
    "Beschreibung" text,
    PRIMARY KEY ("Bestellung", "Zeile")
);

-- No primary key; floats with their special values.
CREATE TABLE events (
    at timestamptz,
    kind text,
    payload jsonb,
    x double precision,
    y real,
    span interval
) WITH (autovacuum_enabled = false);  -- its own setting: a thaw leaves it as it is
CREATE INDEX events_kind ON events (kind);

CREATE TABLE measurements (
    city text NOT NULL,
    logdate date NOT NULL,
    peak integer
) PARTITION BY RANGE (logdate);
CREATE TABLE measurements_2025 PARTITION OF measurements
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measurements_2026 PARTITION OF measurements
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
-- A key and an index of the partitioned table: pg_dump gives each partition its own and
-- attaches them to the parent's (a thaw builds the partitions' early, not the parent's).
ALTER TABLE measurements ADD PRIMARY KEY (city, logdate);
CREATE INDEX measurements_peak ON measurements (peak);

CREATE TABLE cities (name text PRIMARY KEY, population bigint) WITH (fillfactor = 80);
CREATE TABLE capitals (country char(2) NOT NULL) INHERITS (cities);

CREATE UNLOGGED TABLE cache_entries (k text PRIMARY KEY, v bytea, expires timestamptz);

CREATE TABLE products (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title text NOT NULL,
    price numeric(10, 2) NOT NULL,
    qty integer NOT NULL,
    total numeric GENERATED ALWAYS AS (price * qty) STORED
);

CREATE SEQUENCE invoice_no START 1000 INCREMENT 7;
SELECT setval('invoice_no', 1042);
CREATE SEQUENCE unused_seq;

CREATE FUNCTION order_total(c bigint) RETURNS numeric
    LANGUAGE sql STABLE AS $$ SELECT coalesce(sum(amount), 0) FROM orders WHERE customer_id = c $$;

CREATE FUNCTION touch_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := '2026-01-01 00:00:00+00';
    RETURN NEW;
END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION touch_updated();

CREATE PROCEDURE close_orders(before timestamptz) LANGUAGE plpgsql AS $$
BEGIN
    UPDATE orders SET status = 'sad' WHERE placed_at < before;
END $$;

CREATE VIEW order_totals AS
    SELECT c.id, c.name, order_total(c.id) AS total FROM customers c;
CREATE MATERIALIZED VIEW customer_moods AS
    SELECT mood, count(*) AS n FROM customers GROUP BY mood;

-- Rows.
INSERT INTO customers (name, email, mood, note, created, balance, tags, profile, avatar, addr)
SELECT 'Kunde ' || i || CASE WHEN i % 7 = 0 THEN ' 😀' ELSE '' END,
       'k' || i || '@Example.org',
       (ARRAY['sad', 'ok', 'happy', 'überglücklich'])[1 + i % 4]::mood,
       CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN '' ELSE E'line one\nline two\ttab \\ backslash' END,
       timestamptz '2024-02-29 23:59:59.123456+00' + i * interval '1 hour 1 second',
       (i * 12345.6789) % 1000000 - 5000,
       CASE WHEN i % 5 = 0 THEN NULL ELSE ARRAY['a' || i, NULL, 'c"q', ''] END,
       jsonb_build_object('i', i, 'nested', jsonb_build_object('ok', i % 2 = 0, 'xs', jsonb_build_array(1, 2.5, 'drei'))),
       CASE WHEN i % 4 = 0 THEN NULL ELSE decode(md5(i::text), 'hex') || '\x00ff'::bytea END,
       ROW('Straße ' || i, 'Köln', lpad(i::text, 5, '0'))::address
FROM generate_series(1, 3000) i;
INSERT INTO orders (customer_id, amount, status, placed_at)
SELECT 1 + (i * 7) % 3000, (i % 1000) + 0.99, (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::mood,
       timestamptz '2025-06-01 12:00:00+02' + i * interval '17 minutes'
FROM generate_series(1, 12000) i;
INSERT INTO "Läden"."Bestellpositionen"
SELECT 1 + i / 3, i % 3, 1 + i % 9, CASE WHEN i % 2 = 0 THEN 'Pos ' || i END
FROM generate_series(0, 20000) i;
INSERT INTO events
SELECT timestamptz '2026-03-01 00:00:00+00' + i * interval '1 second',
       (ARRAY['click', 'view', 'buy'])[1 + i % 3],
       CASE WHEN i % 10 = 0 THEN NULL ELSE jsonb_build_object('n', i) END,
       CASE i % 50 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN 'Infinity' WHEN 2 THEN '-Infinity'
            WHEN 3 THEN 1e-310 ELSE i / 3.0 END,
       (i / 7.0)::real,
       i * interval '1 minute 0.5 seconds'
FROM generate_series(1, 8000) i;
-- Duplicate rows in the keyless table.
INSERT INTO events SELECT * FROM events WHERE kind = 'buy' AND x < 100;
INSERT INTO measurements
SELECT (ARRAY['Berlin', 'Zürich'])[1 + i % 2], date '2025-01-01' + i, i % 40
FROM generate_series(0, 700) i;
INSERT INTO cities VALUES ('Hamburg', 1900000), ('Leipzig', 600000);
INSERT INTO capitals VALUES ('Berlin', 3700000, 'DE'), ('Bern', 140000, 'CH');
INSERT INTO cache_entries SELECT 'k' || i, '\xdeadbeef', now() FROM generate_series(1, 50) i;
INSERT INTO products (title, price, qty) SELECT 'P' || i, i * 1.25, i % 13 FROM generate_series(1, 500) i;
UPDATE orders SET amount = amount + 1 WHERE id % 100 = 0;
REFRESH MATERIALIZED VIEW customer_moods;
