-- Phase 2 carries a transaction's pricing out on the ledger; store credit and points live
-- in lots with expiry dates.
--
-- Theory of operation. On confirm (switch_post_txn) each grant recorded in phase 1
-- (txn_grant) is posted under the transaction's RRN against its funder:
-- * a discount funded by the store network or a sponsor: discount_funding of that funder
--   pays the merchant's payable the part it funds (the customer paid that much less). A
--   merchant-funded discount moves nothing: the merchant simply received less. Settlement
--   reads who pays from these postings;
-- * cashback and top-up bonus: the issuer (merchant or network) grants store credit,
--   credit_issued -> card_credit, in a lot that expires when the grant says;
-- * points: points_issued of the funder -> card_points, in a lot that expires likewise;
-- * lottery entries are recorded (txn_grant) and move nothing.
-- A reversal after confirm mirrors all of it (0007's ledger_mirror) and gives the
-- reservations back (0012); nothing of the pricing remains.
--
-- Lots. Every posted credit to a card_credit or card_points account opens a lot (the
-- trigger below, whoever writes: confirms, refunds, reversals, the demo seed, the admin);
-- every posted debit consumes open lots, the earliest expiring first (lots that never
-- expire last, then oldest first), so the cardholder may spend any part of a balance. A
-- reversal's debit first takes the lots its own transaction opened, an expiry's the lot it
-- expires. So per account the
-- open lots always sum to the ledger balance (`loyalty db check` proves it). The card
-- account's row lock, which every debit takes, also guards its lots. Expiry
-- (switch_expire_lots, run by the sweeper) debits a due lot's remainder back to its issuer
-- in a balanced transfer; a part held by a pending purchase is expired once that resolves.

CREATE TABLE ledger_lot (
    id          bigserial PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES ledger_account (id),
    transfer_id bigint REFERENCES ledger_transfer (id),  -- NULL: a balance from before lots
    ref         text,
    amount      bigint NOT NULL CHECK (amount > 0),
    remaining   bigint NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    expires_at  timestamptz,                             -- NULL: never
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_lot_open_idx ON ledger_lot (account_id) WHERE remaining > 0;
CREATE INDEX ledger_lot_due_idx ON ledger_lot (expires_at)
    WHERE remaining > 0 AND expires_at IS NOT NULL;
CREATE INDEX ledger_lot_transfer_idx ON ledger_lot (transfer_id);

-- Balances that exist already become lots that never expire.
INSERT INTO ledger_lot (account_id, amount, remaining)
SELECT id, credits_posted - debits_posted, credits_posted - debits_posted
FROM ledger_account
WHERE kind IN ('card_credit', 'card_points') AND credits_posted > debits_posted;

CREATE FUNCTION ledger_lot_entry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_kind  text;
    v_tkind text;
    v_code  text;
    v_ref   text;
    v_left  bigint;
    v_take  bigint;
    l       record;
BEGIN
    SELECT kind INTO v_kind FROM ledger_account WHERE id = NEW.account_id;
    IF v_kind NOT IN ('card_credit', 'card_points') THEN
        RETURN NULL;
    END IF;
    SELECT kind, code, ref INTO v_tkind, v_code, v_ref
    FROM ledger_transfer WHERE id = NEW.transfer_id;
    IF v_tkind NOT IN ('single', 'post') THEN
        RETURN NULL;  -- holds and their voids move no posted balance
    END IF;
    IF NEW.amount < 0 THEN
        INSERT INTO ledger_lot (account_id, transfer_id, ref, amount, remaining)
        VALUES (NEW.account_id, NEW.transfer_id, v_ref, -NEW.amount, -NEW.amount);
        RETURN NULL;
    END IF;
    v_left := NEW.amount;
    FOR l IN
        SELECT id, remaining FROM ledger_lot
        WHERE account_id = NEW.account_id AND remaining > 0
        ORDER BY (v_code = 'reversal' AND ref IS NOT DISTINCT FROM v_ref)
                  OR (v_code = 'lot_expiry' AND v_ref = 'lot:' || id) DESC,
                 expires_at NULLS LAST, id
    LOOP
        v_take := least(v_left, l.remaining);
        UPDATE ledger_lot SET remaining = remaining - v_take WHERE id = l.id;
        v_left := v_left - v_take;
        EXIT WHEN v_left = 0;
    END LOOP;
    IF v_left > 0 THEN
        RAISE EXCEPTION 'ledger: lots of account % do not cover a debit of %',
            NEW.account_id, NEW.amount;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_lot_entry AFTER INSERT ON ledger_entry
    FOR EACH ROW EXECUTE FUNCTION ledger_lot_entry();

-- An account with a sponsor in its key (discount_funding of a bank), as
-- ledger.AccountSpec.key spells it; created on first use.
CREATE FUNCTION ledger_sponsor_account_ensure(p_kind text, p_sponsor text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_key text := p_kind || ':s' || p_sponsor;
    v_id  bigint;
BEGIN
    SELECT id INTO v_id FROM ledger_account WHERE key = v_key;
    IF FOUND THEN
        RETURN v_id;
    END IF;
    INSERT INTO ledger_account (key, kind, unit, sponsor, debits_must_not_exceed_credits)
    VALUES (v_key, p_kind, 'IRR', p_sponsor, false)
    ON CONFLICT (key) DO NOTHING RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT id INTO v_id FROM ledger_account WHERE key = v_key;
    END IF;
    RETURN v_id;
END $$;

-- One balanced two-entry transfer that cannot be refused (the debit side keeps no balance).
CREATE FUNCTION switch_transfer(p_unit text, p_code text, p_ref text, p_debit bigint,
                                p_credit bigint, p_amount bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_status   text;
    v_transfer bigint;
BEGIN
    SELECT status, transfer_id INTO v_status, v_transfer FROM ledger_transfer_create(
        p_unit, p_code, p_ref, ARRAY[p_debit, p_credit], ARRAY[p_amount, -p_amount]);
    IF v_status <> 'ok' THEN
        RAISE EXCEPTION 'switch: % of % refused: %', p_code, p_ref, v_status;
    END IF;
    RETURN v_transfer;
END $$;

-- Post the grants of a confirmed transaction (see the top of this file).
CREATE FUNCTION switch_post_pricing(x txn, p_network bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g          txn_grant%ROWTYPE;
    v_merchant bigint;
    v_network  bigint;
    v_transfer bigint;
BEGIN
    FOR g IN SELECT * FROM txn_grant WHERE txn_id = x.id ORDER BY seq LOOP
        -- The issuer of credit or points: the merchant, or the network.
        v_merchant := CASE WHEN g.funder_kind = 'merchant' THEN x.merchant_id END;
        v_network := CASE WHEN g.funder_kind = 'network' THEN p_network END;
        IF g.effect = 'discount' AND g.funder_kind <> 'merchant' THEN
            PERFORM switch_transfer('IRR', 'discount', x.rrn,
                CASE WHEN g.funder_kind = 'sponsor'
                     THEN ledger_sponsor_account_ensure('discount_funding', g.sponsor)
                     ELSE ledger_account_ensure('discount_funding', NULL, NULL, p_network) END,
                ledger_account_ensure('merchant_payable', NULL, x.merchant_id, NULL), g.amount);
        ELSIF g.effect IN ('cashback', 'top_up_bonus') THEN
            v_transfer := switch_transfer('IRR', g.effect, x.rrn,
                ledger_account_ensure('credit_issued', NULL, v_merchant, v_network),
                ledger_account_ensure('card_credit', x.card_id, v_merchant, v_network), g.amount);
            UPDATE ledger_lot SET expires_at = g.expires_at WHERE transfer_id = v_transfer;
        ELSIF g.effect = 'points' THEN
            v_transfer := switch_transfer('PTS', 'points', x.rrn,
                ledger_account_ensure('points_issued', NULL, v_merchant, v_network),
                ledger_account_ensure('card_points', x.card_id, NULL, NULL), g.amount);
            UPDATE ledger_lot SET expires_at = g.expires_at WHERE transfer_id = v_transfer;
        END IF;
    END LOOP;
END $$;

-- 0007's switch_post_txn, then the pricing.
CREATE OR REPLACE FUNCTION switch_post_txn(x txn, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_fee     bigint := (x.quote->>'network_fee')::bigint;
    v_sign    bigint := CASE WHEN x.kind = 'refund' THEN -1 ELSE 1 END;
    v_network bigint;
BEGIN
    PERFORM switch_resolve_holds(x.rrn, 'post', p_now);
    IF (v_fee = 0 OR x.kind = 'topup') AND x.pricing IS NULL THEN
        RETURN;
    END IF;
    SELECT coalesce(m.network_id, (SELECT min(id) FROM store_network)) INTO v_network
    FROM merchant m WHERE m.id = x.merchant_id;
    IF v_fee <> 0 AND x.kind <> 'topup' THEN
        PERFORM switch_transfer('IRR', x.kind || '_fee', x.rrn,
            ledger_account_ensure('merchant_payable', NULL, x.merchant_id, NULL),
            ledger_account_ensure('fee_income', NULL, NULL, v_network), v_sign * v_fee);
    END IF;
    IF x.pricing IS NOT NULL THEN
        PERFORM switch_post_pricing(x, v_network);
    END IF;
END $$;
