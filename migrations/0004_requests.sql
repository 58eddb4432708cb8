-- Request identity, stored responses, remembered reversals; what the switch needs on `txn`.
--
-- Every request the switch answers from the database is recorded under its identity
-- (terminal, STAN, transmission time) in the same transaction as its effects, with the
-- response bytes. A retransmission finds the row and gets the same response; a concurrent
-- duplicate blocks on the unique index until the first commits, then finds it too.
CREATE TABLE request_log (
    id              bigserial PRIMARY KEY,
    terminal_id     bigint NOT NULL REFERENCES terminal (id),
    stan            char(6) NOT NULL,
    transmitted_at  timestamptz NOT NULL,
    mti             char(4) NOT NULL,
    -- SHA-256 of the request's content fields (not its KSN, MAC or ciphertext), so a
    -- different request under a used identity is told apart from a retransmission.
    digest          bytea NOT NULL CHECK (length(digest) = 32),
    ksn             bytea NOT NULL CHECK (length(ksn) = 12),
    response        bytea NOT NULL,
    response_code   char(2) NOT NULL,
    txn_id          bigint REFERENCES txn (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (terminal_id, stan, transmitted_at)
);

-- A reversal whose original was never seen: acknowledged and remembered, so the original,
-- if it arrives later, is declined.
CREATE TABLE reversal_memo (
    terminal_id     bigint NOT NULL REFERENCES terminal (id),
    stan            char(6) NOT NULL,
    transmitted_at  timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (terminal_id, stan, transmitted_at)
);

ALTER TABLE txn
    -- Refunds name their original purchase; the original tracks how much was refunded.
    ADD COLUMN original_txn_id bigint REFERENCES txn (id),
    ADD COLUMN refunded_rial bigint NOT NULL DEFAULT 0 CHECK (refunded_rial >= 0),
    ADD CHECK (refunded_rial <= amount_rial),
    -- Set by the settlement batch; a reversal after that is refused.
    ADD COLUMN settlement_window_id bigint,
    -- A transaction's ledger transfers (one or two holds, then posts and fees) all carry
    -- its RRN as `ref`; a single hold column cannot describe that, so it goes.
    DROP COLUMN hold_transfer_id,
    -- The keyed hash of the card used (club or bank), so a refund can prove it is the same
    -- card even when a bank card is not linked to any member.
    ADD COLUMN pan_hash bytea CHECK (length(pan_hash) = 32);

-- Retrieval reference numbers: one sequence, so every switch process draws unique ones.
CREATE SEQUENCE rrn_seq MAXVALUE 999999999999 CYCLE;
CREATE INDEX txn_original_idx ON txn (original_txn_id) WHERE original_txn_id IS NOT NULL;
