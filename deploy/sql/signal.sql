-- The capture's signal table (Debezium's signal data collection), one per source database.
--
-- A row asks the running capture for something, today an incremental re-snapshot
-- (`erpcrm resnapshot`, cdc/signals.py). The table is in the capture's publication, so
-- a committed row reaches the capture through its replication slot, in commit order with
-- the changes around it; the capture never publishes it to Kafka. Its watermarks are
-- logical-decoding messages, not rows, so nothing else is ever written here.
--
-- Applied by the tables' owner on every `erpcrm stack up` (idempotent): the capture role
-- may read the table and insert signals into it, and write nothing else anywhere.
CREATE TABLE IF NOT EXISTS public.erpcrm_signal (
    id   varchar(64) PRIMARY KEY,
    type varchar(32) NOT NULL,
    data text
);

REVOKE ALL ON public.erpcrm_signal FROM erpcrm_capture;
GRANT SELECT, INSERT ON public.erpcrm_signal TO erpcrm_capture;
