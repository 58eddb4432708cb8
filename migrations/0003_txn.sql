-- Financial transactions and their two-phase state.
--
-- A transaction is created by an approved 0100 (PENDING), then moves once to CONFIRMED (0220)
-- or VOIDED (0400 or hold expiry); a CONFIRMED one may still be VOIDED by a reversal (with
-- compensating ledger entries) until it is in a settlement window. VOIDED is final. The
-- trigger below refuses every other transition, whoever writes.
CREATE TABLE txn (
    id                  bigserial PRIMARY KEY,
    terminal_id         bigint NOT NULL REFERENCES terminal (id),
    stan                char(6) NOT NULL CHECK (stan ~ '^[0-9]{6}$'),
    -- Field 7 as sent (MMDDhhmmss, UTC) and resolved to a full instant near the switch clock.
    transmission_f7     char(10) NOT NULL CHECK (transmission_f7 ~ '^[0-9]{10}$'),
    transmitted_at      timestamptz NOT NULL,
    processing_code     char(6) NOT NULL CHECK (processing_code ~ '^[0-9]{6}$'),
    kind                text NOT NULL CHECK (kind IN (
                            'bank_purchase', 'club_purchase', 'credit_purchase',
                            'refund', 'topup')),
    amount_rial         bigint NOT NULL CHECK (amount_rial >= 0),
    rrn                 char(12) NOT NULL UNIQUE,
    approval_code       char(6),
    state               text NOT NULL CHECK (state IN ('PENDING', 'CONFIRMED', 'VOIDED')),
    card_id             bigint REFERENCES card (id),
    bank_card_id        bigint REFERENCES bank_card (id),
    merchant_id         bigint NOT NULL REFERENCES merchant (id),
    hold_transfer_id    bigint REFERENCES ledger_transfer (id),
    hold_expires_at     timestamptz,
    quote               jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    confirmed_at        timestamptz,
    voided_at           timestamptz,
    void_reason         text CHECK (void_reason IN ('reversal', 'expired')),
    -- The request identity: a retransmission finds the same row.
    UNIQUE (terminal_id, stan, transmitted_at),
    CHECK ((state = 'VOIDED') = (voided_at IS NOT NULL)),
    CHECK (state <> 'CONFIRMED' OR confirmed_at IS NOT NULL)
);
CREATE INDEX txn_pending_expiry_idx ON txn (hold_expires_at) WHERE state = 'PENDING';
CREATE INDEX txn_card_idx ON txn (card_id) WHERE card_id IS NOT NULL;

CREATE FUNCTION txn_state_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = NEW.state
       OR (OLD.state = 'PENDING' AND NEW.state IN ('CONFIRMED', 'VOIDED'))
       OR (OLD.state = 'CONFIRMED' AND NEW.state = 'VOIDED') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'txn %: % -> % is not a valid transition', OLD.rrn, OLD.state, NEW.state
        USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER txn_state_guard BEFORE UPDATE OF state ON txn
    FOR EACH ROW EXECUTE FUNCTION txn_state_guard();
