-- Settlement: the working-day calendar's holidays, windows and what each window paid.
--
-- Theory of operation (settlement/ holds the code; docs/settlement.md the whole story).
-- * A window collects confirmed transactions up to its cut-off. Its state is the last of its
--   append-only events: OPEN -> CLOSED -> SETTLED, or FAILED (a run that could not finish
--   is recorded and may be run again; FAILED -> SETTLED).
-- * Closing assigns every CONFIRMED transaction confirmed before the cut-off and not yet in
--   a window: one row in settlement_item (its primary key is the transaction: a transaction
--   is in at most one window, whoever writes) and txn.settlement_window_id (which refuses a
--   reversal from then on).
-- * Settling computes positions and the store-credit netting, posts them to the ledger and
--   records them here, in the one database transaction that writes the SETTLED event: a
--   crash leaves the window CLOSED with nothing paid, and a rerun starts from scratch.
-- Positions, payouts and netting rows are written once and never changed (triggers refuse).

-- Holidays: seeded with the official fixed-date (solar) holidays of 1404-1406 and the lunar
-- holidays of 1404 that are known; operators add the rest (`loyalty settle holiday add`).
CREATE TABLE settlement_holiday (
    day         date PRIMARY KEY,
    jalali      char(10) NOT NULL CHECK (jalali ~ '^[0-9]{4}/[0-9]{2}/[0-9]{2}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    source      text NOT NULL CHECK (source IN ('seed', 'operator')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO settlement_holiday (day, jalali, name, source) VALUES
    ('2025-03-21', '1404/01/01', 'Nowruz', 'seed'),
    ('2025-03-22', '1404/01/02', 'Nowruz', 'seed'),
    ('2025-03-23', '1404/01/03', 'Nowruz', 'seed'),
    ('2025-03-24', '1404/01/04', 'Nowruz', 'seed'),
    ('2025-03-31', '1404/01/11', 'Eid al-Fitr', 'seed'),
    ('2025-04-01', '1404/01/12', 'Islamic Republic Day', 'seed'),
    ('2025-04-02', '1404/01/13', 'Nature Day (Sizdah Bedar)', 'seed'),
    ('2025-06-04', '1404/03/14', 'Death of Imam Khomeini', 'seed'),
    ('2025-06-05', '1404/03/15', '15 Khordad uprising', 'seed'),
    ('2025-07-05', '1404/04/14', 'Tasua', 'seed'),
    ('2025-07-06', '1404/04/15', 'Ashura', 'seed'),
    ('2026-02-11', '1404/11/22', 'Victory of the Islamic Revolution', 'seed'),
    ('2026-03-20', '1404/12/29', 'Nationalisation of the oil industry', 'seed'),
    ('2026-03-21', '1405/01/01', 'Nowruz', 'seed'),
    ('2026-03-22', '1405/01/02', 'Nowruz', 'seed'),
    ('2026-03-23', '1405/01/03', 'Nowruz', 'seed'),
    ('2026-03-24', '1405/01/04', 'Nowruz', 'seed'),
    ('2026-04-01', '1405/01/12', 'Islamic Republic Day', 'seed'),
    ('2026-04-02', '1405/01/13', 'Nature Day (Sizdah Bedar)', 'seed'),
    ('2026-06-04', '1405/03/14', 'Death of Imam Khomeini', 'seed'),
    ('2026-06-05', '1405/03/15', '15 Khordad uprising', 'seed'),
    ('2027-02-11', '1405/11/22', 'Victory of the Islamic Revolution', 'seed'),
    ('2027-03-20', '1405/12/29', 'Nationalisation of the oil industry', 'seed'),
    ('2027-03-21', '1406/01/01', 'Nowruz', 'seed'),
    ('2027-03-22', '1406/01/02', 'Nowruz', 'seed'),
    ('2027-03-23', '1406/01/03', 'Nowruz', 'seed'),
    ('2027-03-24', '1406/01/04', 'Nowruz', 'seed'),
    ('2027-04-01', '1406/01/12', 'Islamic Republic Day', 'seed'),
    ('2027-04-02', '1406/01/13', 'Nature Day (Sizdah Bedar)', 'seed'),
    ('2027-06-04', '1406/03/14', 'Death of Imam Khomeini', 'seed'),
    ('2027-06-05', '1406/03/15', '15 Khordad uprising', 'seed'),
    ('2028-02-11', '1406/11/22', 'Victory of the Islamic Revolution', 'seed'),
    ('2028-03-19', '1406/12/29', 'Nationalisation of the oil industry', 'seed');

CREATE TABLE settlement_window (
    id          bigserial PRIMARY KEY,
    -- Transactions confirmed before this instant belong to the window.
    cutoff_at   timestamptz NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE settlement_window_event (
    id          bigserial PRIMARY KEY,
    window_id   bigint NOT NULL REFERENCES settlement_window (id),
    state       text NOT NULL CHECK (state IN ('OPEN', 'CLOSED', 'SETTLED', 'FAILED')),
    at          timestamptz NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX settlement_window_event_idx ON settlement_window_event (window_id, id);
-- A window is settled once.
CREATE UNIQUE INDEX settlement_window_settled_once ON settlement_window_event (window_id)
    WHERE state = 'SETTLED';

CREATE TABLE settlement_item (
    txn_id      bigint PRIMARY KEY,  -- one window per transaction
    window_id   bigint NOT NULL
);
CREATE INDEX settlement_item_window_idx ON settlement_item (window_id);

-- What the lag metric and closing look for: confirmed and not yet in a window.
CREATE INDEX txn_unsettled_idx ON txn (confirmed_at)
    WHERE state = 'CONFIRMED' AND settlement_window_id IS NULL;

-- One merchant's position in one window, in rials, signed as the merchant sees it (what
-- the network owes it is positive). net = brought_forward + every component; a positive
-- net is paid, a negative one is carried to the merchant's next position.
CREATE TABLE settlement_position (
    window_id            bigint NOT NULL REFERENCES settlement_window (id),
    merchant_id          bigint NOT NULL REFERENCES merchant (id),
    txn_count            bigint NOT NULL,
    sales_rial           bigint NOT NULL,
    refunds_rial         bigint NOT NULL,
    fees_rial            bigint NOT NULL,
    discounts_rial       bigint NOT NULL,
    topups_rial          bigint NOT NULL,
    credit_netting_rial  bigint NOT NULL,
    other_rial           bigint NOT NULL,
    brought_forward_rial bigint NOT NULL CHECK (brought_forward_rial <= 0),
    net_rial             bigint NOT NULL,
    payout_rial          bigint NOT NULL CHECK (payout_rial >= 0),
    carried_forward_rial bigint NOT NULL CHECK (carried_forward_rial <= 0),
    PRIMARY KEY (window_id, merchant_id),
    CHECK (net_rial = brought_forward_rial + sales_rial + refunds_rial + fees_rial
                      + discounts_rial + topups_rial + credit_netting_rial + other_rial),
    CHECK (payout_rial = greatest(net_rial, 0) AND carried_forward_rial = least(net_rial, 0))
);
CREATE INDEX settlement_position_merchant_idx ON settlement_position (merchant_id, window_id);

-- A payout instruction: one per merchant with a positive net, to its Sheba account.
CREATE TABLE settlement_payout (
    window_id    bigint NOT NULL REFERENCES settlement_window (id),
    merchant_id  bigint NOT NULL REFERENCES merchant (id),
    reference    char(20) NOT NULL UNIQUE,
    sheba        char(26) NOT NULL CHECK (sheba_is_valid(sheba)),
    name         text NOT NULL,
    amount_rial  bigint NOT NULL CHECK (amount_rial > 0),
    transfer_id  bigint NOT NULL REFERENCES ledger_transfer (id),
    PRIMARY KEY (window_id, merchant_id)
);

-- Store-credit netting inside a store network: each party's net position (a store, or the
-- network itself when merchant_id is NULL) and the transfers that settle them.
CREATE TABLE settlement_credit_position (
    window_id    bigint NOT NULL REFERENCES settlement_window (id),
    network_id   bigint NOT NULL REFERENCES store_network (id),
    merchant_id  bigint REFERENCES merchant (id),
    net_rial     bigint NOT NULL
);
CREATE UNIQUE INDEX settlement_credit_position_key
    ON settlement_credit_position (window_id, network_id, coalesce(merchant_id, 0));

CREATE TABLE settlement_credit_transfer (
    window_id         bigint NOT NULL REFERENCES settlement_window (id),
    seq               integer NOT NULL,
    network_id        bigint NOT NULL REFERENCES store_network (id),
    from_merchant_id  bigint REFERENCES merchant (id),  -- NULL: the network pays
    to_merchant_id    bigint REFERENCES merchant (id),  -- NULL: the network is paid
    amount_rial       bigint NOT NULL CHECK (amount_rial > 0),
    transfer_id       bigint NOT NULL REFERENCES ledger_transfer (id),
    PRIMARY KEY (window_id, seq)
);

CREATE FUNCTION settlement_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'settlement records are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'raise_exception';
END $$;
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['settlement_window_event', 'settlement_item', 'settlement_position',
                             'settlement_payout', 'settlement_credit_position',
                             'settlement_credit_transfer'] LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I FOR EACH ROW '
                       'EXECUTE FUNCTION settlement_append_only()', t || '_append_only', t);
    END LOOP;
END $$;
