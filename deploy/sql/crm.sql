-- Demo CRM database, shaped like SuiteCRM (accounts, contacts, AOS products, quotes,
-- invoices).
--
-- Loaded once into an empty database when the local stack creates the CRM cluster.
-- The seed data is generated deterministically (generate_series, modular arithmetic and
-- md5-derived UUIDs, no random()), so every fresh stack starts from the same rows.
-- The customers' VAT ids come from the temporary table seed_vat, shared with the
-- ERP seed: the stack runs deploy/sql/seed_vat.sql first, in the same session.
--
-- Contract used by the sync (DESIGN.md section 3):
--   * every table has a primary key (the replica identity); ids are UUIDs, new rows
--     get gen_random_uuid();
--   * rows are soft-deleted (deleted = true), as in SuiteCRM;
--   * date_modified (updated_at on product_availability) is maintained by
--     public.touch_row() on every UPDATE that changes the row, unless the statement
--     sets it itself;
--   * accounts.account_number is the ERP customer number (res_partner.ref); accounts
--     without one are CRM-only prospects. Seeded accounts C00001..C00170 use
--     md5('erpcrm-demo-account-' || account_number)::uuid as id, the value the ERP
--     seed stores in res_partner.crm_account_id;
--   * aos_products.part_number is the ERP SKU (product_product.default_code);
--   * billing_address_country holds an ISO 3166-1 alpha-2 code;
--   * product_availability and aos_invoices are fed only from the ERP and start empty;
--   * a quote whose stage becomes 'Closed Accepted' is an order for the ERP; seeded
--     accepted quotes already carry the name of their ERP order (erp_order_name).
--     Quote lines keep the SKU in part_number; product_id may be NULL for a free-text
--     line.

BEGIN;

SET client_min_messages = warning;

-- One trigger function for every modification stamp: it sets the column named by the
-- trigger's first argument to the transaction time, unless the UPDATE assigns that column
-- itself (a writer that sets it keeps its value). The triggers below also say both
-- conditions in their WHEN clause (the row changed, the stamp did not), so the function
-- runs only when it has a stamp to write. The stamps this schema has are assigned as
-- fields: no per-row conversion of OLD and NEW (to_jsonb of a wide row costs more than
-- the UPDATE itself); any other column name takes the generic jsonb path.
CREATE FUNCTION public.touch_row() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    col text := COALESCE(TG_ARGV[0], 'date_modified');
BEGIN
    CASE col
        WHEN 'date_modified' THEN
            IF NEW.date_modified IS NOT DISTINCT FROM OLD.date_modified THEN
                NEW.date_modified := now();
            END IF;
        WHEN 'updated_at' THEN
            IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
                NEW.updated_at := now();
            END IF;
        ELSE
            IF to_jsonb(NEW) -> col IS NOT DISTINCT FROM to_jsonb(OLD) -> col THEN
                NEW := jsonb_populate_record(NEW, jsonb_build_object(col, now()));
            END IF;
    END CASE;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION public.touch_row() IS
    'BEFORE UPDATE trigger: sets the column named by TG_ARGV[0] (default date_modified) to '
    'now() unless the UPDATE assigns it.';

CREATE SEQUENCE public.aos_quotes_number_seq START 1041;
CREATE SEQUENCE public.aos_invoices_number_seq START 1;

CREATE TABLE public.accounts (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                        text NOT NULL,
    date_entered                timestamptz NOT NULL DEFAULT now(),
    date_modified               timestamptz NOT NULL DEFAULT now(),
    modified_user_id            text,
    created_by                  text,
    assigned_user_id            text,
    description                 text,
    deleted                     boolean NOT NULL DEFAULT false,
    account_type                text,
    industry                    text,
    annual_revenue              text,
    employees                   text,
    account_number              text,
    vat                         text,
    email                       text,
    phone_office                text,
    phone_alternate             text,
    phone_fax                   text,
    website                     text,
    billing_address_street      text,
    billing_address_city        text,
    billing_address_state       text,
    billing_address_postalcode  text,
    billing_address_country     text,
    shipping_address_street     text,
    shipping_address_city       text,
    shipping_address_state      text,
    shipping_address_postalcode text,
    shipping_address_country    text,
    parent_id                   uuid REFERENCES public.accounts (id)
);
-- One live account per ERP customer number.
CREATE UNIQUE INDEX accounts_account_number_live_key
    ON public.accounts (account_number) WHERE account_number IS NOT NULL AND NOT deleted;
CREATE INDEX accounts_vat_idx ON public.accounts (vat);
CREATE INDEX accounts_email_idx ON public.accounts (lower(email));
-- Deleting an account checks that no account names it as parent: without this index,
-- a scan of the whole table per deleted row (deploy/sql/crm-upgrade.sql adds it to a
-- database made before).
CREATE INDEX accounts_parent_id_idx ON public.accounts (parent_id);

CREATE TABLE public.contacts (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id                  uuid REFERENCES public.accounts (id),
    salutation                  text,
    first_name                  text,
    last_name                   text NOT NULL,
    title                       text,
    department                  text,
    email                       text,
    phone_work                  text,
    phone_mobile                text,
    primary_address_street      text,
    primary_address_city        text,
    primary_address_postalcode  text,
    primary_address_country     text,
    lead_source                 text,
    do_not_call                 boolean NOT NULL DEFAULT false,
    description                 text,
    assigned_user_id            text,
    deleted                     boolean NOT NULL DEFAULT false,
    date_entered                timestamptz NOT NULL DEFAULT now(),
    date_modified               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contacts_account_id_idx ON public.contacts (account_id);
CREATE INDEX contacts_email_idx ON public.contacts (lower(email));

CREATE TABLE public.aos_products (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL,
    part_number     text UNIQUE,
    category        text,
    type            text NOT NULL DEFAULT 'Good',
    price           numeric(12, 2) NOT NULL DEFAULT 0,
    cost            numeric(12, 2) NOT NULL DEFAULT 0,
    currency_id     text NOT NULL DEFAULT 'EUR',
    url             text,
    description     text,
    deleted         boolean NOT NULL DEFAULT false,
    date_entered    timestamptz NOT NULL DEFAULT now(),
    date_modified   timestamptz NOT NULL DEFAULT now()
);

-- Stock as the ERP reports it, one row per product; written only by the sync.
CREATE TABLE public.product_availability (
    product_id      uuid PRIMARY KEY REFERENCES public.aos_products (id) ON DELETE CASCADE,
    part_number     text NOT NULL,
    on_hand         numeric(16, 3) NOT NULL DEFAULT 0,
    reserved        numeric(16, 3) NOT NULL DEFAULT 0,
    available       numeric(16, 3) NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX product_availability_part_number_idx ON public.product_availability (part_number);

CREATE TABLE public.opportunities (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text NOT NULL,
    account_id          uuid REFERENCES public.accounts (id),
    opportunity_type    text,
    lead_source         text,
    amount              numeric(14, 2),
    currency_id         text NOT NULL DEFAULT 'EUR',
    date_closed         date,
    next_step           text,
    sales_stage         text NOT NULL DEFAULT 'Prospecting',
    probability         integer,
    description         text,
    assigned_user_id    text,
    deleted             boolean NOT NULL DEFAULT false,
    date_entered        timestamptz NOT NULL DEFAULT now(),
    date_modified       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX opportunities_account_id_idx ON public.opportunities (account_id);

CREATE TABLE public.aos_quotes (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text NOT NULL,
    number              integer NOT NULL UNIQUE DEFAULT nextval('public.aos_quotes_number_seq'),
    account_id          uuid REFERENCES public.accounts (id),
    contact_id          uuid REFERENCES public.contacts (id),
    opportunity_id      uuid REFERENCES public.opportunities (id),
    stage               text NOT NULL DEFAULT 'Draft',
    approval_status     text,
    term                text,
    expiration          date,
    currency_id         text NOT NULL DEFAULT 'EUR',
    total_amt           numeric(14, 2) NOT NULL DEFAULT 0,
    discount_amount     numeric(14, 2) NOT NULL DEFAULT 0,
    subtotal_amount     numeric(14, 2) NOT NULL DEFAULT 0,
    shipping_amount     numeric(14, 2) NOT NULL DEFAULT 0,
    tax_amount          numeric(14, 2) NOT NULL DEFAULT 0,
    total_amount        numeric(14, 2) NOT NULL DEFAULT 0,
    erp_order_name      text,
    erp_order_state     text,
    description         text,
    assigned_user_id    text,
    deleted             boolean NOT NULL DEFAULT false,
    date_entered        timestamptz NOT NULL DEFAULT now(),
    date_modified       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX aos_quotes_account_id_idx ON public.aos_quotes (account_id);
CREATE INDEX aos_quotes_stage_idx ON public.aos_quotes (stage);

CREATE TABLE public.aos_products_quotes (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    parent_type         text NOT NULL DEFAULT 'AOS_Quotes',
    parent_id           uuid NOT NULL REFERENCES public.aos_quotes (id) ON DELETE CASCADE,
    number              integer,
    name                text,
    part_number         text,
    product_id          uuid REFERENCES public.aos_products (id),
    product_qty         numeric(18, 4) NOT NULL DEFAULT 1,
    product_cost_price  numeric(12, 2),
    product_list_price  numeric(12, 2),
    product_discount    numeric(9, 2) NOT NULL DEFAULT 0,
    discount            text NOT NULL DEFAULT 'Percentage',
    product_unit_price  numeric(12, 2),
    vat                 text NOT NULL DEFAULT '19.0',
    vat_amt             numeric(14, 2) NOT NULL DEFAULT 0,
    product_total_price numeric(14, 2) NOT NULL DEFAULT 0,
    item_description    text,
    deleted             boolean NOT NULL DEFAULT false,
    date_entered        timestamptz NOT NULL DEFAULT now(),
    date_modified       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX aos_products_quotes_parent_id_idx ON public.aos_products_quotes (parent_id);
CREATE INDEX aos_products_quotes_product_id_idx ON public.aos_products_quotes (product_id);

CREATE TABLE public.aos_invoices (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text NOT NULL,
    number              integer NOT NULL UNIQUE DEFAULT nextval('public.aos_invoices_number_seq'),
    account_id          uuid REFERENCES public.accounts (id),
    quote_id            uuid REFERENCES public.aos_quotes (id),
    erp_invoice_name    text UNIQUE,
    status              text NOT NULL DEFAULT 'Unpaid',
    invoice_date        date,
    due_date            date,
    currency_id         text NOT NULL DEFAULT 'EUR',
    subtotal_amount     numeric(14, 2) NOT NULL DEFAULT 0,
    tax_amount          numeric(14, 2) NOT NULL DEFAULT 0,
    total_amount        numeric(14, 2) NOT NULL DEFAULT 0,
    amount_due          numeric(14, 2) NOT NULL DEFAULT 0,
    description         text,
    deleted             boolean NOT NULL DEFAULT false,
    date_entered        timestamptz NOT NULL DEFAULT now(),
    date_modified       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX aos_invoices_account_id_idx ON public.aos_invoices (account_id);

-- Modification stamps. The WHEN clause keeps no-op updates from touching the row, and
-- calls the function only when the UPDATE left the stamp alone.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('accounts', 'date_modified'), ('contacts', 'date_modified'),
        ('aos_products', 'date_modified'), ('opportunities', 'date_modified'),
        ('aos_quotes', 'date_modified'), ('aos_products_quotes', 'date_modified'),
        ('aos_invoices', 'date_modified'), ('product_availability', 'updated_at')
    ) AS v (tbl, col)
    LOOP
        EXECUTE format(
            'CREATE TRIGGER %I BEFORE UPDATE ON public.%I FOR EACH ROW '
            'WHEN (OLD.* IS DISTINCT FROM NEW.* AND OLD.%I IS NOT DISTINCT FROM NEW.%I) '
            'EXECUTE FUNCTION public.touch_row(%L)',
            t.tbl || '_touch_' || t.col, t.tbl, t.col, t.col, t.col);
    END LOOP;
END;
$$;

-- ---------------------------------------------------------------------------
-- Seed data. The customer and product formulas repeat the ERP seed's, so the
-- linked records agree field by field.
-- ---------------------------------------------------------------------------

CREATE TEMPORARY TABLE seed_country (
    idx         integer PRIMARY KEY,
    code        text,
    suffix      text,
    street      text,
    number_first boolean,
    city_a      text,
    zip_a       text,
    city_b      text,
    zip_b       text,
    phone       text,
    mobile      text
) ON COMMIT DROP;
INSERT INTO seed_country VALUES
    (0, 'DE', 'GmbH',   'Friedrichstraße',    false, 'Berlin',    '10117',    'Hamburg',   '20095',    '+49 30 ',  '+49 151 '),
    (1, 'FR', 'SARL',   'Rue de Rivoli',      true,  'Paris',     '75001',    'Lyon',      '69002',    '+33 1 ',   '+33 6 '),
    (2, 'NL', 'B.V.',   'Keizersgracht',      false, 'Amsterdam', '1016 DK',  'Utrecht',   '3511 AX',  '+31 20 ',  '+31 6 '),
    (3, 'GB', 'Ltd',    'Baker Street',       true,  'London',    'NW1 6XE',  'Manchester','M1 1AE',   '+44 20 ',  '+44 7700 '),
    (4, 'US', 'Inc.',   'Madison Avenue',     true,  'New York',  '10016',    'Boston',    '02108',    '+1 212 ',  '+1 646 '),
    (5, 'IT', 'S.r.l.', 'Via Torino',         false, 'Milano',    '20123',    'Torino',    '10121',    '+39 02 ',  '+39 347 '),
    (6, 'ES', 'S.L.',   'Calle de Alcalá',    false, 'Madrid',    '28014',    'Valencia',  '46002',    '+34 91 ',  '+34 612 '),
    (7, 'AT', 'GmbH',   'Mariahilfer Straße', false, 'Wien',      '1060',     'Graz',      '8010',     '+43 1 ',   '+43 664 '),
    (8, 'BE', 'SA',     'Rue Neuve',          true,  'Bruxelles', '1000',     'Antwerpen', '2000',     '+32 2 ',   '+32 470 '),
    (9, 'CH', 'AG',     'Bahnhofstrasse',     false, 'Zürich',    '8001',     'Basel',     '4051',     '+41 44 ',  '+41 79 ');

CREATE TEMPORARY TABLE seed_words ON COMMIT DROP AS
SELECT ARRAY['Nordwind', 'Alpen', 'Blue Harbor', 'Silverline', 'Greenfield', 'Atlas',
             'Falcon', 'Riverside', 'Summit', 'Oakwood', 'Meridian', 'Polaris',
             'Redstone', 'Crescent', 'Harbor Bay', 'Evergreen', 'Ironbridge'] AS a,   -- 17
       ARRAY['Trading', 'Logistics', 'Industrial', 'Components', 'Supply', 'Engineering',
             'Retail', 'Systems', 'Works', 'Distribution', 'Technik', 'Manufacturing',
             'Wholesale', 'Partners', 'Solutions', 'Hardware', 'Tools', 'Machines',
             'Foods'] AS b,                                                            -- 19
       ARRAY['Anna', 'Lukas', 'Marie', 'Jonas', 'Sophie', 'Paul', 'Emma', 'Louis',
             'Clara', 'Matteo', 'Julia', 'Noah', 'Lea'] AS first,                      -- 13
       ARRAY['Schmidt', 'Martin', 'de Vries', 'Smith', 'Johnson', 'Rossi', 'García',
             'Gruber', 'Peeters', 'Meier', 'Bernard', 'Jansen', 'Brown', 'Bianchi',
             'López', 'Huber', 'Dubois', 'Müller', 'Wilson', 'Moreau', 'Fischer',
             'Keller', 'Novak'] AS last,                                               -- 23
       ARRAY['Manufacturing', 'Retail', 'Wholesale', 'Construction', 'Transportation',
             'Engineering', 'Energy', 'Food & Beverage', 'Machinery', 'Healthcare',
             'Hospitality'] AS industry,                                               -- 11
       ARRAY['Purchasing Manager', 'Managing Director', 'Head of Operations', 'Buyer',
             'Accounts Payable', 'Sales Director', 'Office Manager', 'CFO',
             'Warehouse Lead'] AS title;                                               -- 9

-- Accounts 1..170 mirror ERP customers C00001..C00170; 171..200 are prospects.
CREATE TEMPORARY TABLE seed_account ON COMMIT DROP AS
SELECT a,
       CASE WHEN a <= 170 THEN 'C' || lpad(a::text, 5, '0') END AS account_number,
       md5('erpcrm-demo-account-'
           || CASE WHEN a <= 170 THEN 'C' || lpad(a::text, 5, '0')
                   ELSE 'P' || lpad(a::text, 5, '0') END)::uuid AS id
FROM generate_series(1, 200) AS a;

WITH gen AS (
    SELECT sa.a AS i, sa.id, sa.account_number,
           c.*,
           (sa.a <= 170 AND sa.a % 9 = 4) AS individual,
           w.a[1 + (sa.a * 7) % 17] AS wa,
           w.b[1 + (sa.a * 11) % 19] AS wb,
           w.first[1 + (sa.a * 5) % 13] AS fn,
           w.last[1 + (sa.a * 3) % 23] AS ln,
           w.industry[1 + sa.a % 11] AS industry,
           lpad(((sa.a::bigint * 982451653 + 314159265) % 1000000000)::text, 9, '0') AS digits,
           sv.vat
    FROM seed_account AS sa
    CROSS JOIN seed_words AS w
    JOIN seed_country AS c ON c.idx = sa.a % 10
    -- The linked accounts have their ERP customer's VAT id; prospects have none.
    LEFT JOIN seed_vat AS sv ON sv.customer = sa.a AND sa.a <= 170
)
INSERT INTO public.accounts
    (id, name, account_type, industry, account_number, vat, email, phone_office, website,
     billing_address_street, billing_address_city, billing_address_postalcode,
     billing_address_country, assigned_user_id, created_by)
SELECT
    id,
    CASE WHEN i > 170 THEN wb || ' ' || wa || ' Group'
         WHEN individual THEN fn || ' ' || ln
         ELSE wa || ' ' || wb || ' ' || suffix END,
    CASE WHEN i > 170 THEN 'Prospect' ELSE 'Customer' END,
    CASE WHEN individual THEN NULL ELSE industry END,
    account_number,
    vat,
    CASE
        WHEN i > 170 THEN
            'contact@' || lower(replace(wb, ' ', '')) || '-' || lower(replace(wa, ' ', ''))
            || '.example.org'
        WHEN individual THEN
            lower(translate(fn || '.' || replace(ln, ' ', ''), 'áéíóúüöäç', 'aeiouuoac'))
            || i || '@mail.example.net'
        ELSE 'info@' || lower(replace(wa, ' ', '')) || '-' || lower(wb) || '.example.com'
    END,
    phone || substr(digits, 3, 3) || ' ' || substr(digits, 6, 4),
    CASE WHEN individual THEN NULL
         WHEN i > 170 THEN 'https://' || lower(replace(wb, ' ', '')) || '-'
                           || lower(replace(wa, ' ', '')) || '.example.org'
         ELSE 'https://www.' || lower(replace(wa, ' ', '')) || '-' || lower(wb) || '.example.com'
    END,
    CASE WHEN number_first THEN (1 + (i * 13) % 240) || ' ' || street
         ELSE street || ' ' || (1 + (i * 13) % 240) END,
    CASE WHEN (i / 10) % 2 = 0 THEN city_a ELSE city_b END,
    CASE WHEN (i / 10) % 2 = 0 THEN zip_a ELSE zip_b END,
    code,
    'sales-' || (1 + i % 4),
    'admin'
FROM gen
ORDER BY i;

-- One to three contacts per account.
INSERT INTO public.contacts
    (id, account_id, first_name, last_name, title, email, phone_work, phone_mobile,
     primary_address_city, primary_address_country, lead_source, assigned_user_id)
SELECT
    md5('erpcrm-demo-contact-' || sa.a || '-' || k)::uuid,
    sa.id,
    fn,
    ln,
    w.title[1 + (sa.a + k * 4) % 9],
    lower(translate(fn || '.' || replace(ln, ' ', ''), 'áéíóúüöäç', 'aeiouuoac'))
        || '@' || split_part(acc.email, '@', 2),
    acc.phone_office,
    c.mobile || lpad(((sa.a * 7919 + k * 104729) % 10000000)::text, 7, '0'),
    acc.billing_address_city,
    acc.billing_address_country,
    CASE WHEN sa.a > 170 THEN 'Trade Show' ELSE 'Existing Customer' END,
    acc.assigned_user_id
FROM seed_account AS sa
JOIN public.accounts AS acc ON acc.id = sa.id
JOIN seed_country AS c ON c.idx = sa.a % 10
CROSS JOIN seed_words AS w
CROSS JOIN LATERAL generate_series(1, 1 + sa.a % 3) AS k
CROSS JOIN LATERAL (
    SELECT w.first[1 + (sa.a * 7 + k * 3) % 13] AS fn,
           w.last[1 + (sa.a * 5 + k * 11) % 23] AS ln
) AS n
ORDER BY sa.a, k;

-- The ERP catalogue SKU-00001..SKU-00200 (archived ERP products are soft-deleted here).
WITH words AS (
    SELECT ARRAY['Steel', 'Stainless', 'Aluminium', 'Brass', 'Nylon', 'Ceramic', 'Carbon',
                 'Galvanised', 'Heavy-Duty'] AS material,                                  -- 9
           ARRAY['Hex Bolt M8', 'Ball Bearing 608ZZ', 'Door Hinge 90mm', 'Cable Tie 200mm',
                 'Pipe Clamp 32mm', 'Washer M10', 'Spur Gear 24T', 'Compression Spring 40mm',
                 'Angle Bracket 100mm', 'Caster Wheel 75mm', 'Threaded Rod M12',
                 'Wing Nut M6', 'Shelf Support', 'Drawer Slide 450mm', 'Chain 6mm',
                 'Shackle 10mm', 'Eye Bolt M10', 'Rivet 4.8mm', 'Anchor Plug 8mm',
                 'Hose Clamp 40mm', 'Pulley 50mm', 'Gas Spring 300N', 'Pallet Strap'] AS item, -- 23
           ARRAY['Fasteners', 'Bearings', 'Hardware', 'Fasteners', 'Clamps', 'Fasteners',
                 'Drive Parts', 'Springs', 'Hardware', 'Wheels', 'Fasteners', 'Fasteners',
                 'Hardware', 'Hardware', 'Lifting', 'Lifting', 'Lifting', 'Fasteners',
                 'Fasteners', 'Clamps', 'Drive Parts', 'Springs', 'Packaging'] AS categ
), gen AS (
    SELECT p,
           'SKU-' || lpad(p::text, 5, '0') AS sku,
           w.material[1 + p % 9] AS material,
           w.item[1 + p % 23] AS item,
           w.categ[1 + p % 23] AS categ,
           ((500 + (p * 7919) % 99500) / 100.0)::numeric(12, 2) AS list_price
    FROM generate_series(1, 200) AS p
    CROSS JOIN words AS w
)
INSERT INTO public.aos_products (id, name, part_number, category, type, price, cost, deleted)
SELECT
    md5('erpcrm-demo-product-' || sku)::uuid,
    CASE WHEN p % 25 = 0 THEN 'Installation Service ' || item ELSE material || ' ' || item END,
    sku,
    CASE WHEN p % 25 = 0 THEN 'Services' ELSE categ END,
    CASE WHEN p % 25 = 0 THEN 'Service' ELSE 'Good' END,
    list_price,
    round(list_price * (0.55 + (p % 20) / 100.0), 2),
    p % 97 = 0
FROM gen
ORDER BY p;

-- Opportunities across customers and prospects.
INSERT INTO public.opportunities
    (id, name, account_id, opportunity_type, lead_source, amount, date_closed, sales_stage,
     probability, assigned_user_id)
SELECT
    md5('erpcrm-demo-opportunity-' || o)::uuid,
    acc.name || ' - ' || (ARRAY['Annual supply contract', 'Spare parts framework',
                                'Warehouse equipment', 'Replenishment', 'New site fit-out'])
                         [1 + o % 5],
    acc.id,
    CASE WHEN acc.account_type = 'Customer' THEN 'Existing Business' ELSE 'New Business' END,
    (ARRAY['Web Site', 'Trade Show', 'Existing Customer', 'Cold Call', 'Partner'])[1 + o % 5],
    (1000 + (o * 7331) % 90000)::numeric(14, 2),
    date '2024-06-01' + o * 5,
    s.stage,
    s.probability,
    acc.assigned_user_id
FROM generate_series(1, 60) AS o
JOIN seed_account AS sa ON sa.a = (o * 41) % 200 + 1
JOIN public.accounts AS acc ON acc.id = sa.id
CROSS JOIN LATERAL (
    SELECT (ARRAY['Prospecting', 'Qualification', 'Needs Analysis', 'Value Proposition',
                  'Proposal/Price Quote', 'Negotiation/Review', 'Closed Won',
                  'Closed Lost'])[1 + o % 8] AS stage,
           (ARRAY[10, 20, 25, 30, 65, 80, 100, 0])[1 + o % 8] AS probability
) AS s
ORDER BY o;

-- Quotes 1001..1040. Every fourth one (k % 4 = 0) was accepted and became ERP order
-- S000(5k/4); its account and lines follow the ERP seed's order formulas.
CREATE TEMPORARY TABLE seed_quote ON COMMIT DROP AS
SELECT k,
       1000 + k AS number,
       md5('erpcrm-demo-quote-' || (1000 + k))::uuid AS id,
       k % 4 = 0 AS accepted,
       CASE WHEN k % 4 = 0 THEN k * 5 / 4 END AS order_no,
       CASE WHEN k % 4 = 0 THEN ((k * 5 / 4) * 37) % 170 + 1 ELSE (k * 53) % 200 + 1 END AS a
FROM generate_series(1, 40) AS k;

INSERT INTO public.aos_quotes
    (id, name, number, account_id, contact_id, stage, approval_status, term, expiration,
     erp_order_name, erp_order_state, assigned_user_id)
SELECT
    sq.id,
    acc.name || ' - Quote ' || sq.number,
    sq.number,
    acc.id,
    md5('erpcrm-demo-contact-' || sq.a || '-1')::uuid,
    CASE WHEN sq.accepted THEN 'Closed Accepted'
         WHEN sq.k % 4 = 1 THEN 'Draft'
         WHEN sq.k % 4 = 2 THEN 'Negotiation'
         WHEN sq.k % 8 = 3 THEN 'Closed Lost'
         ELSE 'Delivered' END,
    CASE WHEN sq.accepted THEN 'Approved' END,
    (ARRAY['Net 15', 'Net 30', 'Net 45'])[1 + sq.k % 3],
    date '2024-04-01' + sq.k * 3,
    CASE WHEN sq.accepted THEN 'S' || lpad(sq.order_no::text, 5, '0') END,
    CASE WHEN sq.accepted THEN 'sale' END,
    acc.assigned_user_id
FROM seed_quote AS sq
JOIN seed_account AS sa ON sa.a = sq.a
JOIN public.accounts AS acc ON acc.id = sa.id
ORDER BY sq.k;

INSERT INTO public.aos_products_quotes
    (parent_id, number, name, part_number, product_id, product_qty, product_cost_price,
     product_list_price, product_discount, product_unit_price, vat_amt, product_total_price)
SELECT sq.id, j, ap.name, ap.part_number, ap.id, l.qty, ap.cost, ap.price, l.discount,
       round(ap.price * (1 - l.discount / 100), 2),
       round(l.total * 0.19, 2),
       l.total
FROM seed_quote AS sq
CROSS JOIN LATERAL generate_series(1, CASE WHEN sq.accepted THEN 1 + (sq.order_no * 3 + sq.order_no / 5) % 5
                                           ELSE 1 + sq.k % 4 END) AS j
CROSS JOIN LATERAL (
    SELECT CASE WHEN sq.accepted THEN (sq.order_no * 13 + j * 29) % 200 + 1
                ELSE (sq.k * 31 + j * 17) % 200 + 1 END AS p,
           CASE WHEN sq.accepted THEN 1 + (sq.order_no + j * 3) % 10
                ELSE 1 + (sq.k + j) % 8 END::numeric AS qty,
           CASE WHEN sq.accepted THEN CASE WHEN (sq.order_no + j) % 7 = 0 THEN 10 ELSE 0 END
                ELSE CASE WHEN (sq.k + j) % 6 = 0 THEN 5 ELSE 0 END END::numeric AS discount
) AS d
JOIN public.aos_products AS ap ON ap.part_number = 'SKU-' || lpad(d.p::text, 5, '0')
CROSS JOIN LATERAL (
    SELECT d.qty, d.discount, round(d.qty * ap.price * (1 - d.discount / 100), 2) AS total
) AS l
ORDER BY sq.k, j;

UPDATE public.aos_quotes AS q
SET total_amt = t.gross,
    discount_amount = t.gross - t.net,
    subtotal_amount = t.net,
    tax_amount = t.tax,
    total_amount = t.net + t.tax
FROM (
    SELECT parent_id,
           sum(round(product_qty * product_list_price, 2)) AS gross,
           sum(product_total_price) AS net,
           sum(vat_amt) AS tax
    FROM public.aos_products_quotes GROUP BY parent_id
) AS t
WHERE t.parent_id = q.id;

-- Tables edited on both sides carry their old row in every update (REPLICA IDENTITY
-- FULL), so a change event knows which fields it changed: the field-level merge
-- of the sinks compares only those.
ALTER TABLE public.accounts REPLICA IDENTITY FULL;
ALTER TABLE public.contacts REPLICA IDENTITY FULL;
ALTER TABLE public.aos_products REPLICA IDENTITY FULL;
ALTER TABLE public.aos_quotes REPLICA IDENTITY FULL;

ANALYZE;

COMMIT;
