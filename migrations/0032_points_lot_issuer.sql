-- Points lots are drawn only by debits to their own issuer (review 2, defect 2).
--
-- 0021's lot trigger takes a debit from the card account's lots: a clawback's from its
-- purchase's lots first, then, like any other debit, from all the account's open lots
-- earliest expiring first. Since 0026 a points lot's issuer matters (its points are worth
-- that issuer's points value), and only a redemption took its issuer's lots alone. A member
-- who redeemed the points a purchase earned and then had the purchase refunded had the
-- clawback drain another issuer's lot and post it to the purchase's issuer: points issued by
-- a merchant went back to the network, at the network's value.
--
-- * A points lot's issuer is, as 0014's expiry and 0026's redemption read it, the
--   points_issued account of the transfer that opened it, else (a balance from before lots,
--   the demo seed) the card network's: ledger_points_lot_issuer.
-- * ledger_lot_take (0021), on a card_points account, takes only the lots whose issuer is
--   credited by the same transfer: a clawback's, a reversal's and an expiry's points go back
--   to the issuer whose lots they leave. (A reversal of a purchase that earned points of two
--   issuers posts one PTS transfer crediting both; its remainder may take the lots of either.)
--   When those lots cannot cover the debit it raises SW003, which ledger_mirror (0007, 0030) turns
--   into 'exceeds_credits': a reversal whose points were redeemed is declined as one whose
--   credit was spent.
-- * A clawback of points (switch_clawback_grant, 0024) takes at most what the grant's
--   issuer's lots hold on the card; txn_clawback records the due and what was taken, as
--   before when the card held less than the due.
-- `db check` proves that every draw from a points lot was made by a transfer crediting the
-- lot's issuer.

-- The points_issued account that issued the points of a lot opened by transfer `p_transfer`
-- on card_points account `p_account` (see the top of this file).
CREATE FUNCTION ledger_points_lot_issuer(p_transfer bigint, p_account bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT e.account_id FROM ledger_entry e
         JOIN ledger_account i ON i.id = e.account_id AND i.kind = 'points_issued'
         WHERE e.transfer_id = p_transfer LIMIT 1),
        (SELECT ledger_account_find('points_issued', NULL, NULL, c.network_id)
         FROM ledger_account a JOIN card c ON c.id = a.card_id WHERE a.id = p_account))
$$;

-- 0021's ledger_lot_take; on a points account, only the lots of the issuers the transfer
-- credits (see the top of this file).
CREATE OR REPLACE FUNCTION ledger_lot_take(p_account bigint, p_transfer bigint,
                                           p_amount bigint, p_first_lot bigint,
                                           p_first_ref text, p_undoes bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_left    bigint := p_amount;
    v_take    bigint;
    v_issuers bigint[];  -- NULL: any lot
    l         record;
BEGIN
    IF (SELECT kind FROM ledger_account WHERE id = p_account) = 'card_points' THEN
        SELECT array_agg(e.account_id) INTO v_issuers FROM ledger_entry e
        JOIN ledger_account i ON i.id = e.account_id AND i.kind = 'points_issued'
        WHERE e.transfer_id = p_transfer AND e.amount < 0;
    END IF;
    FOR l IN
        SELECT id, remaining FROM ledger_lot
        WHERE account_id = p_account AND remaining > 0
          AND (v_issuers IS NULL
               OR ledger_points_lot_issuer(transfer_id, p_account) = ANY (v_issuers))
        ORDER BY id = p_first_lot IS TRUE DESC, ref = p_first_ref IS TRUE DESC,
                 expires_at NULLS LAST, id
    LOOP
        EXIT WHEN v_left = 0;
        v_take := least(v_left, l.remaining);
        PERFORM ledger_lot_move(l.id, p_transfer, v_take, p_undoes);
        v_left := v_left - v_take;
    END LOOP;
    IF v_left > 0 THEN
        RAISE EXCEPTION 'ledger: lots of account % do not cover a debit of %',
            p_account, p_amount USING ERRCODE = 'SW003';
    END IF;
END $$;

-- 0024's clawback of one grant; points only as far as the grant's issuer's lots hold them.
CREATE OR REPLACE FUNCTION switch_clawback_grant(x txn, o txn, g txn_grant, p_network bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    a       record;
    v_due   bigint := switch_clawback_due(o, g, x);
    v_avail bigint;
    v_taken bigint;
BEGIN
    SELECT * INTO a FROM switch_grant_accounts(g, o, p_network);
    IF g.effect = 'discount' THEN
        v_taken := v_due;
    ELSE
        SELECT credits_posted - debits_posted - debits_pending INTO v_avail
        FROM ledger_account WHERE id = a.card FOR UPDATE;
        IF g.effect = 'points' THEN  -- the account's lock also guards its lots (0013)
            v_avail := least(v_avail, (SELECT coalesce(sum(l.remaining), 0) FROM ledger_lot l
                                       WHERE l.account_id = a.card AND l.remaining > 0
                                         AND ledger_points_lot_issuer(l.transfer_id, a.card)
                                             = a.issued));
        END IF;
        v_taken := least(v_due, greatest(v_avail, 0));
    END IF;
    IF v_taken > 0 AND a.issued IS NOT NULL THEN
        PERFORM switch_transfer(a.unit, g.effect || '_clawback', x.rrn, a.card, a.issued,
                                v_taken);
    END IF;
    IF v_due > 0 THEN
        INSERT INTO txn_clawback (txn_id, original_txn_id, seq, due, taken)
        VALUES (x.id, o.id, g.seq, v_due, v_taken);
    END IF;
END $$;
