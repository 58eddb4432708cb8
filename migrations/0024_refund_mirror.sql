-- A refund gives back what its purchase's discounts cost their funders, and the budgets;
-- a sponsor's points are the sponsor's; tier points are net of what refunds took back.
--
-- 1. Discounts. A discount funded by the network or a sponsor was posted on confirm as
--    discount_funding -> merchant_payable (0013), and a refund gave back only the payable
--    (merchant_payable -> card), so a fully refunded purchase left the discount with the
--    merchant and the funder paying for a sale that did not happen. A refund now takes
--    back its share of every discount grant, as 0017 takes back cashback and points: the
--    grant times the refunded part of the payable, floored, the refund that completes the
--    payable owing the rest (0021's switch_clawback_due), so the shares of the standing
--    refunds sum to the grant. The share of a network or sponsor discount is posted under the refund's
--    RRN as the mirror of the grant, merchant_payable -> discount_funding of the same
--    funder, code 'discount_clawback'. A merchant's payable has no floor, so the whole
--    share is always taken. The share of a merchant-funded discount moves nothing (it is
--    inside the payable the refund gives back), but it is recorded too, so that the
--    budget below counts it. Every share is a txn_clawback row (due = taken for
--    discounts), so `db check` proves what was posted.
-- 2. Budgets. A budget is what a funder is willing to give. What a refund took back was
--    not given after all, so a confirmed refund gives the budgets its purchase reserved
--    the part it took back (of every grant: discounts, cashback, top-up bonus, points;
--    lottery entries are not taken back and stay spent), in rials or in units by what the
--    grant is. Daily per-card amounts are not given back: the day's limit was about that
--    day. A reversal of the refund reserves that part again; when the budget was granted
--    to others meanwhile and has no room for it, the reversal is declined (51, as when
--    the card spent what a reversal would take back) and changes nothing: a budget is
--    never exceeded. 0027's switch_reverse decides that after it mirrored the ledger (it
--    locks campaign rows last), in switch_release_refund, which then raises to undo the
--    request, naming the decline in the error's detail; switch/store.py answers it. The
--    campaign rows are locked last, in id order, on confirm as on reversal (0027).
-- 3. Sponsor points were posted from an account without an owner (points_issued with no
--    merchant, network or sponsor). They are posted from the sponsor's own points_issued
--    account (key points_issued:s<code>, in points); a refund takes them back there, and
--    lot expiry (0014) gives them back there, as it reads the issuer from the grant's
--    transfer. Points posted before this migration stay where they were posted.
-- 4. Tier points (0015) counted every point granted, while tier spend is net of refunds.
--    They now subtract what the standing refunds owed of the points (txn_clawback.due:
--    the refunded share, whether or not the card still had the points, as spend subtracts
--    the refunded amount whatever the card did with it).

-- 0013's sponsor account, in points for points_issued.
CREATE OR REPLACE FUNCTION ledger_sponsor_account_ensure(p_kind text, p_sponsor text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_key text := p_kind || ':s' || p_sponsor;
    v_id  bigint;
BEGIN
    SELECT id INTO v_id FROM ledger_account WHERE key = v_key;
    IF FOUND THEN
        RETURN v_id;
    END IF;
    INSERT INTO ledger_account (key, kind, unit, sponsor, debits_must_not_exceed_credits)
    VALUES (v_key, p_kind, CASE WHEN p_kind = 'points_issued' THEN 'PTS' ELSE 'IRR' END,
            p_sponsor, false)
    ON CONFLICT (key) DO NOTHING RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT id INTO v_id FROM ledger_account WHERE key = v_key;
    END IF;
    RETURN v_id;
END $$;

-- 0019's accounts of a grant, for discounts and sponsor points too. `issued` is the
-- funder's side: credit_issued or points_issued of the issuer (the funding merchant, the
-- network or the sponsor), or discount_funding of the network or sponsor. `card` is the
-- side that receives: card_credit under the same issuer, card_points, or for a discount
-- the merchant's payable. Both NULL for a merchant-funded discount and for lottery
-- entries, which move nothing. Created on first use, the funder's side first.
CREATE OR REPLACE FUNCTION switch_grant_accounts(g txn_grant, o txn, p_network bigint,
                                                 OUT unit text, OUT issued bigint,
                                                 OUT card bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_merchant bigint := CASE WHEN g.funder_kind = 'merchant' THEN o.merchant_id END;
    v_network  bigint := CASE WHEN g.funder_kind = 'network' THEN p_network END;
    v_issuer   text := CASE g.effect WHEN 'points' THEN 'points_issued'
                                     WHEN 'discount' THEN 'discount_funding'
                                     ELSE 'credit_issued' END;
BEGIN
    unit := CASE WHEN g.effect = 'points' THEN 'PTS' ELSE 'IRR' END;
    IF g.effect = 'lottery' OR (g.effect = 'discount' AND g.funder_kind = 'merchant') THEN
        RETURN;
    END IF;
    issued := CASE WHEN g.funder_kind = 'sponsor'
                   THEN ledger_sponsor_account_ensure(v_issuer, g.sponsor)
                   ELSE ledger_account_ensure(v_issuer, NULL, v_merchant, v_network) END;
    card := CASE g.effect
        WHEN 'points' THEN ledger_account_ensure('card_points', o.card_id, NULL, NULL)
        WHEN 'discount' THEN ledger_account_ensure('merchant_payable', NULL, o.merchant_id, NULL)
        ELSE ledger_account_ensure('card_credit', o.card_id, v_merchant, v_network) END;
END $$;

-- 0019's grant posting: every grant that moves something, from its funder's side to the
-- receiving side (switch_grant_accounts), under its effect as the code. Only store credit
-- and points open lots, whose expiry is the grant's.
CREATE OR REPLACE FUNCTION switch_post_pricing(x txn, p_network bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g          txn_grant%ROWTYPE;
    a          record;
    v_transfer bigint;
BEGIN
    FOR g IN SELECT * FROM txn_grant WHERE txn_id = x.id ORDER BY seq LOOP
        SELECT * INTO a FROM switch_grant_accounts(g, x, p_network);
        CONTINUE WHEN a.issued IS NULL;
        v_transfer := switch_transfer(a.unit, g.effect, x.rrn, a.issued, a.card, g.amount);
        IF g.effect <> 'discount' THEN
            UPDATE ledger_lot SET expires_at = g.expires_at WHERE transfer_id = v_transfer;
        END IF;
    END LOOP;
END $$;

-- 0019's clawback of one grant, discounts included (see the top of this file), owing what
-- 0021's switch_clawback_due reckons. A card's account gives back no more than it has
-- available; a merchant's payable gives the whole share. (0017's last argument, the amount
-- refunded, is dropped: switch_clawback_due reckons it.)
DROP FUNCTION switch_clawback_grant(txn, txn, txn_grant, bigint, bigint);
CREATE FUNCTION switch_clawback_grant(x txn, o txn, g txn_grant, p_network bigint)
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

-- The grants a refund takes back a share of (0017's, and discounts).
CREATE FUNCTION switch_clawback_effect(p_effect text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_effect IN ('discount', 'cashback', 'top_up_bonus', 'points')
$$;

-- 0017's clawback of a confirmed refund, for every grant switch_clawback_effect names.
CREATE OR REPLACE FUNCTION switch_clawback(x txn, p_network bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    o txn%ROWTYPE;
    g txn_grant%ROWTYPE;
BEGIN
    SELECT * INTO o FROM txn WHERE id = x.original_txn_id;
    FOR g IN SELECT * FROM txn_grant WHERE txn_id = o.id AND switch_clawback_effect(effect)
             ORDER BY seq LOOP
        PERFORM switch_clawback_grant(x, o, g, p_network);
    END LOOP;
END $$;

-- What refund `x` took back of the grants of each rule its purchase reserved against a
-- budget, and whether the budget counts units (points, entries) rather than rials.
CREATE FUNCTION switch_refund_budget_shares(x txn)
RETURNS TABLE (rule_id text, units boolean, amount bigint)
LANGUAGE sql STABLE AS $$
    SELECT g.rule_id, g.effect = 'points', sum(c.taken)::bigint
    FROM txn_clawback c JOIN txn_grant g ON g.txn_id = c.original_txn_id AND g.seq = c.seq
    WHERE c.txn_id = x.id AND c.taken > 0
      AND EXISTS (SELECT 1 FROM txn_reservation v WHERE v.txn_id = c.original_txn_id
                  AND v.rule_id = g.rule_id AND v.budget)
    GROUP BY g.rule_id, g.effect = 'points'
$$;

-- Lock, in id order, the campaign rows whose budgets refund `x` gives back or reserves
-- again (after the ledger accounts: 0027's lock order).
CREATE FUNCTION switch_lock_refund_budgets(x txn) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM campaign
    WHERE id IN (SELECT rule_id FROM txn_reservation WHERE txn_id = x.original_txn_id AND budget)
    ORDER BY id FOR UPDATE;
END $$;

-- Whether every budget has room again for what refund `x` gave back to it.
CREATE FUNCTION switch_refund_budgets_fit(x txn) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM switch_refund_budget_shares(x) s JOIN campaign k ON k.id = s.rule_id
        WHERE (campaign_budget_left(k) >= s.amount) IS NOT TRUE)
$$;

-- Give back (`p_sign` -1, on confirm) or reserve again (+1, on reversal) what refund `x`
-- took back, in each budget's counter.
CREATE FUNCTION switch_refund_budgets(x txn, p_sign bigint) RETURNS void
LANGUAGE sql AS $$
    UPDATE campaign k
    SET budget_used_rial = k.budget_used_rial + CASE WHEN s.units THEN 0
                                                     ELSE p_sign * s.amount END,
        budget_used_units = k.budget_used_units + CASE WHEN s.units THEN p_sign * s.amount
                                                       ELSE 0 END
    FROM switch_refund_budget_shares(x) s WHERE k.id = s.rule_id
$$;

-- 0017's switch_post_txn: a refund also takes back its share of the discounts, and gives
-- the budgets what it took back, locking their campaign rows last (0027's lock order).
CREATE OR REPLACE FUNCTION switch_post_txn(x txn, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_fee     bigint := (x.quote->>'network_fee')::bigint;
    v_sign    bigint := CASE WHEN x.kind = 'refund' THEN -1 ELSE 1 END;
    v_grants  boolean := false;
    v_network bigint;
BEGIN
    IF x.kind = 'refund' THEN
        -- Lock the original first, as the refund's phase 1 did (lock order).
        PERFORM 1 FROM txn WHERE id = x.original_txn_id FOR UPDATE;
        v_grants := EXISTS (SELECT 1 FROM txn_grant WHERE txn_id = x.original_txn_id
                            AND switch_clawback_effect(effect));
    END IF;
    PERFORM switch_resolve_holds(x.rrn, 'post', p_now);
    IF (v_fee = 0 OR x.kind = 'topup') AND x.pricing IS NULL AND NOT v_grants THEN
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
    IF v_grants THEN
        PERFORM switch_clawback(x, v_network);
        PERFORM switch_lock_refund_budgets(x);  -- campaign rows last (0027's lock order)
        PERFORM switch_refund_budgets(x, -1);
    END IF;
END $$;

-- 0007's give-back of a refund's amount to its purchase, called by a void, a hold expiry and
-- a reversal. The reversal of a confirmed refund (0027's switch_reverse, after it mirrored
-- the ledger: campaign rows last, 0027's lock order) also reserves again what the refund gave
-- back to the budgets. When a budget was granted to others since and has no room for it, it
-- raises, which undoes the whole request, naming the decline (51) that the switch answers
-- (switch/store.py): a budget is never exceeded.
CREATE OR REPLACE FUNCTION switch_release_refund(x txn) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE txn SET refunded_rial = refunded_rial - x.amount_rial
    WHERE id = x.original_txn_id AND x.kind = 'refund';
    IF x.kind = 'refund' AND x.state = 'CONFIRMED' THEN
        PERFORM switch_lock_refund_budgets(x);
        IF NOT switch_refund_budgets_fit(x) THEN
            RAISE EXCEPTION 'switch: refund % gave back budget that was granted since', x.rrn
                USING DETAIL = 'decline:INSUFFICIENT_FUNDS';
        END IF;
        PERFORM switch_refund_budgets(x, 1);
    END IF;
END $$;

-- 0015's tier review, with the points the standing refunds owed back subtracted.
CREATE OR REPLACE FUNCTION switch_review_tier(x txn, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    p        tier_policy%ROWTYPE;
    k        card%ROWTYPE;
    v_spend  bigint;
    v_points bigint;
BEGIN
    SELECT * INTO k FROM card WHERE id = x.card_id;
    SELECT * INTO p FROM tier_policy WHERE network_id = k.network_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT coalesce(sum((y.quote->>'payable')::bigint - y.refunded_rial), 0),
           coalesce(sum((SELECT sum(g.amount - coalesce((
                             SELECT sum(c.due) FROM txn_clawback c
                             JOIN txn f ON f.id = c.txn_id AND f.state = 'CONFIRMED'
                             WHERE c.original_txn_id = g.txn_id AND c.seq = g.seq), 0))
                         FROM txn_grant g WHERE g.txn_id = y.id AND g.effect = 'points')), 0)
    INTO v_spend, v_points
    FROM txn y
    WHERE y.card_id IN (SELECT id FROM card WHERE member_id = k.member_id)
      AND y.state = 'CONFIRMED' AND y.confirmed_at > p_now - interval '12 months'
      AND y.kind IN ('bank_purchase', 'club_purchase', 'credit_purchase');
    UPDATE card SET tier = tier_review(k.tier, v_spend, v_points, p)
    WHERE id = k.id AND tier <> tier_review(k.tier, v_spend, v_points, p);
END $$;
