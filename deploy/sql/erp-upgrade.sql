-- Changes to the demo ERP schema made after databases were first created from erp.sql
-- (which has each of them already), for a database created before.
--
-- Applied by the tables' owner on every `erpcrm stack up`, after the database answers
-- (idempotent). Each change first looks whether it is needed, so a database that has it
-- is not locked at all.

-- Products and orders are edited on both sides too (a CRM edit of a field the ERP owns is
-- refused and reverted): their updates carry the old row (REPLICA IDENTITY FULL), so a
-- change event names the fields it changed.
DO $$
DECLARE
    rel text;
BEGIN
    FOREACH rel IN ARRAY ARRAY['public.product_product', 'public.sale_order'] LOOP
        IF (SELECT relreplident FROM pg_class WHERE oid = to_regclass(rel)) <> 'f' THEN
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
        END IF;
    END LOOP;
END
$$;
