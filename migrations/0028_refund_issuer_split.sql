-- A refund of a store-credit purchase splits what it gives back among the issuers by what
-- each issuer still has to get back, not by the purchase's refunded amount (issue 5,
-- protocol rule 21).
--
-- 0007's split read the range [refunded, refunded + amount) of the purchase's spending
-- order (its holds, the merchant's own credit first, then the network's) and gave each
-- issuer the part of the range its hold covered. That is right while refunds only add up.
-- But a refund voided before its confirm or reversed after it takes its amount off the
-- refunded amount, not its own place in the range: the refunds after it then read a range
-- that overlaps theirs. Example: 600 from the merchant and 400 from the network; refunds
-- of 300 (merchant), 400 (300 merchant, 100 network) and 200 (network); the middle one is
-- reversed, so 500 is refunded and the last 500 reads [500, 1000): 100 merchant, 400
-- network. The network got back 600 of the 400 it gave, the merchant 400 of its 600; the
-- total was right. 0021's lots took the network's excess as a new lot.
--
-- Now each issuer's part is filled in spending order against what is left to give back to
-- it: what the purchase drew from its account less what the refunds not voided (pending
-- ones hold it, confirmed ones not reversed gave it) hold or gave back to that account.
-- Pending refunds count because their holds are posted as they are if confirmed; a
-- refund voided later only makes what is left larger, so no set of refunds standing at
-- any time gives an issuer more than the purchase drew from it. The parts sum to the
-- amount exactly (the amount is at most what is left to refund, which is what the issuers
-- have left together), there is no rounding, and the refund that completes the payable
-- gives each issuer exactly what it has left. Without reversals the split is 0007's.
-- Refunds of one purchase are split one at a time: phase 1 holds the purchase's lock.

-- What refund phase 1 for `p_amount` of purchase `o` gives back to each issuer's credit
-- account, in the purchase's spending order; accounts it gives nothing are left out.
CREATE FUNCTION switch_refund_credit_parts(o txn, p_amount bigint)
RETURNS TABLE (account bigint, merchant_id bigint, network_id bigint, amount bigint)
LANGUAGE sql STABLE AS $$
    WITH drawn AS (  -- per account, what the purchase's posted holds took from it
        SELECT e.account_id, a.merchant_id, a.network_id, min(hp.id) AS n,
               sum(x.amount)::bigint AS drawn
        FROM ledger_transfer hp
        JOIN ledger_transfer x ON x.pending_id = hp.id AND x.kind = 'post'
        JOIN ledger_entry e ON e.transfer_id = hp.id AND e.amount > 0
        JOIN ledger_account a ON a.id = e.account_id
        WHERE hp.ref = o.rrn AND hp.kind = 'pending'
        GROUP BY e.account_id, a.merchant_id, a.network_id
    ), left_ AS (  -- less what the refunds not voided hold or gave back to it
        SELECT d.account_id, d.merchant_id, d.network_id, d.n,
               greatest(d.drawn - coalesce((
                   SELECT sum(-e.amount) FROM txn r
                   JOIN ledger_transfer h ON h.ref = r.rrn AND h.kind = 'pending'
                   JOIN ledger_entry e ON e.transfer_id = h.id AND e.amount < 0
                                      AND e.account_id = d.account_id
                   WHERE r.original_txn_id = o.id AND r.kind = 'refund'
                     AND r.state <> 'VOIDED'), 0), 0)::bigint AS left_
        FROM drawn d
    ), part AS (
        SELECT account_id, merchant_id, network_id, n,
               least(left_, greatest(p_amount - (sum(left_) OVER fill - left_), 0)) AS amount
        FROM left_ WINDOW fill AS (ORDER BY n ROWS UNBOUNDED PRECEDING)
    )
    SELECT account_id, merchant_id, network_id, amount::bigint FROM part
    WHERE amount > 0 ORDER BY n
$$;

-- 0007's refund, a store-credit purchase's part per issuer from switch_refund_credit_parts
-- (the rest of the body is 0007's, restated: that is how a migration changes a function).
CREATE OR REPLACE FUNCTION switch_refund(r switch_request, t switch_terminal, c switch_card,
                                         p switch_auth) RETURNS switch_result
LANGUAGE plpgsql AS $$
DECLARE
    o         txn%ROWTYPE;
    k         record;
    b         record;
    h         record;
    v_hash    bytea;
    v_card    bigint;
    v_basis   jsonb;
    v_rrn     text;
    v_left    bigint;
BEGIN
    IF p.original_rrn IS NULL THEN
        RETURN switch_declined('INVALID_TRANSACTION');  -- a refund without field 48 tag OR
    END IF;
    SELECT * INTO o FROM txn WHERE rrn = p.original_rrn FOR UPDATE;
    IF NOT FOUND OR o.merchant_id <> t.merchant_id THEN
        RETURN switch_declined('ORIGINAL_NOT_FOUND');
    END IF;
    IF o.kind <> p.refund_of OR o.state <> 'CONFIRMED' THEN
        RETURN switch_declined('INVALID_TRANSACTION');
    END IF;
    IF p.amount > (o.quote->>'payable')::bigint - o.refunded_rial THEN
        RETURN switch_declined('INVALID_AMOUNT');  -- more than what is left to refund
    END IF;
    IF o.kind = 'bank_purchase' THEN
        SELECT * INTO b FROM switch_bank_card(c, r.now);
        IF b.decline IS NOT NULL THEN
            RETURN switch_declined(b.decline);
        END IF;
        v_card := o.card_id;
    ELSE
        SELECT * INTO k FROM switch_club_card(c, t, r.now);
        IF k.decline IS NOT NULL THEN
            RETURN switch_declined(k.decline);
        END IF;
        v_card := k.card_id;
    END IF;
    v_hash := c.pan_hash;
    IF v_hash IS DISTINCT FROM o.pan_hash THEN
        RETURN switch_declined('INVALID_TRANSACTION');  -- not the card of the original
    END IF;
    -- The network gives back its fee in proportion (pricing.refund_share).
    v_basis := jsonb_build_object(
        'amount', p.amount, 'original_fee', (o.quote->>'network_fee')::bigint,
        'original_payable', (o.quote->>'payable')::bigint, 'refunded', o.refunded_rial);
    IF p.basis IS DISTINCT FROM v_basis THEN
        RETURN switch_price_again(v_basis);
    END IF;
    v_rrn := switch_new_rrn();
    IF o.kind = 'club_purchase' THEN
        PERFORM switch_hold('refund', v_rrn,
                            ledger_account_ensure('merchant_payable', NULL, o.merchant_id, NULL),
                            ledger_account_ensure('card_rial', o.card_id, NULL, NULL),
                            p.amount, r.now + t.hold_timeout);
    ELSIF o.kind = 'credit_purchase' THEN
        -- Store credit goes back to the issuers it came from (see the top of this file).
        v_left := p.amount;
        FOR h IN SELECT * FROM switch_refund_credit_parts(o, p.amount) LOOP
            PERFORM switch_hold('refund', v_rrn,
                                ledger_account_ensure('credit_issued', NULL, h.merchant_id,
                                                      h.network_id),
                                h.account, h.amount, r.now + t.hold_timeout);
            v_left := v_left - h.amount;
        END LOOP;
        IF v_left <> 0 THEN
            RAISE EXCEPTION 'switch: issuers of % have % less to get back than refund %',
                o.rrn, v_left, v_rrn;
        END IF;
    END IF;  -- a bank purchase's money goes back at the bank; only fees move on confirm
    UPDATE txn SET refunded_rial = refunded_rial + p.amount WHERE id = o.id;
    RETURN switch_approved(v_rrn, p.kind,
                           switch_new_txn(r, t, p, v_rrn, v_card, v_hash, o.id), '{}');
END $$;
