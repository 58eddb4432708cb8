-- A points lot's issuer, read in one place.
--
-- 0014's lot expiry and 0026's redemption each spelled out which points_issued account a
-- points lot belongs to (that of the transfer that opened it, else the card network's);
-- 0032 then named the rule ledger_points_lot_issuer for the lot trigger. Both earlier
-- functions now call it, so the rule the trigger enforces and the one expiry and redemption
-- apply cannot drift apart. Behaviour is unchanged: expiry still creates the network's
-- points_issued account when the lot has none yet (COALESCE evaluates its second argument
-- only when the first is NULL), and redemption still counts a lot whose issuer account does
-- not exist as another issuer's.

-- 0014's lot expiry, the points issuer from ledger_points_lot_issuer.
CREATE OR REPLACE FUNCTION switch_expire_lots(p_now timestamptz, p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
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
            v_issuer := coalesce(
                ledger_points_lot_issuer(l.transfer_id, l.account_id),
                ledger_account_ensure('points_issued', NULL, NULL,
                                      (SELECT network_id FROM card WHERE id = a.card_id)));
        END IF;
        PERFORM switch_transfer(a.unit, 'lot_expiry', 'lot:' || l.id, l.account_id,
                                v_issuer, v_take);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END $$;
ALTER FUNCTION switch_expire_lots(timestamptz, integer) SET plan_cache_mode = force_generic_plan;

-- 0026's open points lots and whether each is redeemable for issuer `p_issued` at `p_now`.
-- `p_network` (the card's network) is no longer read: ledger_points_lot_issuer finds the
-- card's network from the account; the signature stays for the callers.
CREATE OR REPLACE FUNCTION switch_points_lots(p_account bigint, p_network bigint,
                                              p_issued bigint, p_now timestamptz)
RETURNS TABLE (id bigint, remaining bigint, expires_at timestamptz, ours boolean)
LANGUAGE sql STABLE AS $$
    SELECT l.id, l.remaining, l.expires_at,
           coalesce(ledger_points_lot_issuer(l.transfer_id, l.account_id) = p_issued, false)
           AND (l.expires_at IS NULL OR l.expires_at > p_now)
    FROM ledger_lot l WHERE l.account_id = p_account AND l.remaining > 0
$$;
