-- Expiry of store credit and points lots (see 0013 for lots).
--
-- `switch_expire_lots` takes up to `p_limit` lots due at `p_now` and, for each, debits
-- what remains of it (at most what the account has available: a part held by a pending
-- purchase is left until that resolves) back to its issuer in one balanced transfer,
-- code 'lot_expiry', ref 'lot:<id>'. Store credit goes back to credit_issued of the
-- account's issuer; points to the points_issued account that granted them (else the card's
-- network's). The card account is locked before its lots are read (the order every debit
-- takes), so concurrent spends and several sweepers agree. Returns how many lots it
-- expired (in whole or in part).

CREATE FUNCTION switch_expire_lots(p_now timestamptz, p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    l         record;
    a         ledger_account%ROWTYPE;
    v_left    bigint;
    v_take    bigint;
    v_issuer  bigint;
    v_count   integer := 0;
BEGIN
    FOR l IN
        SELECT id, account_id, transfer_id FROM ledger_lot
        WHERE remaining > 0 AND expires_at <= p_now
        ORDER BY expires_at, id LIMIT p_limit
    LOOP
        SELECT * INTO a FROM ledger_account WHERE id = l.account_id FOR UPDATE;
        SELECT remaining INTO v_left FROM ledger_lot WHERE id = l.id;
        v_take := least(v_left, a.credits_posted - a.debits_posted - a.debits_pending);
        CONTINUE WHEN v_take <= 0;
        IF a.kind = 'card_credit' THEN
            v_issuer := ledger_account_ensure('credit_issued', NULL, a.merchant_id,
                                              a.network_id);
        ELSE
            SELECT e.account_id INTO v_issuer FROM ledger_entry e
            JOIN ledger_account i ON i.id = e.account_id AND i.kind = 'points_issued'
            WHERE e.transfer_id = l.transfer_id LIMIT 1;
            IF v_issuer IS NULL THEN
                v_issuer := ledger_account_ensure(
                    'points_issued', NULL, NULL,
                    (SELECT network_id FROM card WHERE id = a.card_id));
            END IF;
        END IF;
        PERFORM switch_transfer(a.unit, 'lot_expiry', 'lot:' || l.id, l.account_id,
                                v_issuer, v_take);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END $$;
ALTER FUNCTION switch_expire_lots(timestamptz, integer) SET plan_cache_mode = force_generic_plan;
