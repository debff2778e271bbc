-- Changes to the demo CRM schema made after databases were first created from crm.sql
-- (which has each of them already), for a database created before.
--
-- Applied by the tables' owner on every `erpcrm stack up`, after the database answers
-- (idempotent). Each change first looks whether it is needed, so a database that has it
-- is not locked at all (CREATE INDEX IF NOT EXISTS would lock the table before looking).

-- Deleting an account checks that no account names it as parent: without an index on
-- parent_id, that is a scan of the whole table per deleted row (20,000 accounts deleted
-- at once took about 80 s).
DO $$
BEGIN
    IF to_regclass('public.accounts_parent_id_idx') IS NULL THEN
        CREATE INDEX accounts_parent_id_idx ON public.accounts (parent_id);
    END IF;
END
$$;

-- Products and orders are edited on both sides too (a CRM edit of a field the ERP owns is
-- refused and reverted): their updates carry the old row (REPLICA IDENTITY FULL), so a
-- change event names the fields it changed.
DO $$
DECLARE
    rel text;
BEGIN
    FOREACH rel IN ARRAY ARRAY['public.aos_products', 'public.aos_quotes'] LOOP
        IF (SELECT relreplident FROM pg_class WHERE oid = to_regclass(rel)) <> 'f' THEN
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
        END IF;
    END LOOP;
END
$$;
