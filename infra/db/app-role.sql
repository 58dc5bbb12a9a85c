-- The detector's database role (txpipe_app by default). Run by an admin (the RDS master
-- user, or a superuser) in the pipeline's database; idempotent, so running it again
-- changes the password and repairs ownership.
--
-- The role can log in and owns the schema txpipe - the detector's tables live there (its
-- migrations run as this role on its first connection, and it manages the partitions of
-- the transactions table) - and nothing else: not a superuser, cannot create roles or
-- databases, cannot create objects in public, no rights on other schemas or databases.
--
-- Placeholders, filled in by whoever runs it (the DbSetup custom resource, or
-- infra/db/app_role.py):
--   {{role}}           the role, as a quoted identifier, e.g. "txpipe_app"
--   {{role_literal}}   the same name as a string literal, e.g. 'txpipe_app'
--   {{verifier}}       a SCRAM-SHA-256 verifier as a string literal - never the
--                      password itself, so no log or pg_stat_statements ever holds it
--   {{database}}       the database, as a quoted identifier, e.g. "txpipe"
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {{role_literal}}) THEN
    CREATE ROLE {{role}};
  END IF;
END
$$;
-- An admin that is not a superuser (the RDS master) may not even restate SUPERUSER,
-- REPLICATION or BYPASSRLS (PostgreSQL 15 and 16 refuse NOSUPERUSER from it), so only
-- the attributes it may change are set, and only when they need to change; a role that
-- has one of the other three is refused (a superuser must remove it first). A new role
-- has none of them.
DO $$
DECLARE
  r pg_roles%ROWTYPE;
BEGIN
  SELECT * INTO r FROM pg_roles WHERE rolname = {{role_literal}};
  IF r.rolsuper OR r.rolreplication OR r.rolbypassrls THEN
    RAISE EXCEPTION 'role % has SUPERUSER, REPLICATION or BYPASSRLS: a superuser must remove them first', r.rolname;
  END IF;
  IF r.rolcreatedb THEN
    EXECUTE format('ALTER ROLE %I NOCREATEDB', r.rolname);
  END IF;
  IF r.rolcreaterole THEN
    EXECUTE format('ALTER ROLE %I NOCREATEROLE', r.rolname);
  END IF;
END
$$;
ALTER ROLE {{role}} WITH LOGIN PASSWORD {{verifier}};
-- PostgreSQL 16: an admin that is not a superuser (the RDS master) may give objects to
-- a role only if it may SET ROLE to it.
GRANT {{role}} TO CURRENT_USER;
GRANT CONNECT, TEMPORARY ON DATABASE {{database}} TO {{role}};
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS txpipe AUTHORIZATION {{role}};
ALTER SCHEMA txpipe OWNER TO {{role}};
ALTER ROLE {{role}} IN DATABASE {{database}} SET search_path = txpipe;
-- Upgrade from a detector that connected as the master user: its tables move from
-- public to txpipe, owned by the role.
DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['schema_migrations', 'detections', 'chunks', 'rejected_rows',
                           'transactions', 'customer_stats'] LOOP
    IF to_regclass('public.' || t) IS NOT NULL AND to_regclass('txpipe.' || t) IS NULL THEN
      EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t, {{role_literal}});
      EXECUTE format('ALTER TABLE public.%I SET SCHEMA txpipe', t);
    END IF;
  END LOOP;
END
$$;
