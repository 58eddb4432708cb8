-- A refund takes back, in proportion, the store credit and points its purchase granted.
--
-- Theory of operation. When a refund is confirmed (switch_post_txn), each cashback, top-up
-- bonus and points grant of the original purchase (txn_grant) owes a share: the grant times
-- the refunded part of the original's payable, floored, the refund that completes the
-- payable owing the remainder (the rule of pricing.refund_share, so the shares of all live
-- refunds sum to the grant exactly). The share is computed against what the live (confirmed,
-- not reversed) earlier refunds already owed, so a reversed refund's share is owed again by
-- the next one. It is posted under the refund's RRN as the mirror of the grant posting
-- (card_credit -> credit_issued of the same issuer, card_points -> points_issued, code
-- <effect>_clawback); the lot trigger consumes the card's lots as for any debit. It is
-- limited to what the card's account still has available (posted balance less pending
-- debits): the customer may have spent it. Each share is recorded in txn_clawback with what
-- was owed (due) and what was taken (taken); due - taken is the part lost to the funder, for
-- audit. A reversal of the refund mirrors its postings under its RRN (0007's ledger_mirror),
-- which gives the taken part back to the card, and the refund's rows stop counting once it
-- is VOIDED. The original purchase's row is locked first (as a refund's phase 1 does), so
-- two refunds of one purchase confirm in order.

CREATE TABLE txn_clawback (
    txn_id          bigint NOT NULL REFERENCES txn (id),  -- the refund
    original_txn_id bigint NOT NULL,
    seq             smallint NOT NULL,                      -- the grant's seq in txn_grant
    due             bigint NOT NULL CHECK (due >= 0),
    taken           bigint NOT NULL CHECK (taken >= 0 AND taken <= due),
    PRIMARY KEY (txn_id, seq),
    FOREIGN KEY (original_txn_id, seq) REFERENCES txn_grant (txn_id, seq)
);
CREATE INDEX txn_clawback_original_idx ON txn_clawback (original_txn_id, seq);

-- pricing.refund_share in SQL: the part of `p_total` owed once `p_done` of `p_amount` was
-- refunded (floor; all of it once the amount is refunded whole).
CREATE FUNCTION switch_share_due(p_total bigint, p_done bigint, p_amount bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_done >= p_amount THEN p_total ELSE p_total * p_done / p_amount END
$$;

-- Take back one grant's share (see the top of this file) and record it.
CREATE FUNCTION switch_clawback_grant(x txn, o txn, g txn_grant, p_network bigint,
                                      p_done bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_merchant bigint := CASE WHEN g.funder_kind = 'merchant' THEN o.merchant_id END;
    v_network  bigint := CASE WHEN g.funder_kind = 'network' THEN p_network END;
    v_card     bigint;
    v_issued   bigint;
    v_due      bigint;
    v_avail    bigint;
    v_taken    bigint;
BEGIN
    SELECT switch_share_due(g.amount, p_done, (o.quote->>'payable')::bigint)
           - coalesce(sum(c.due), 0) INTO v_due
    FROM txn_clawback c JOIN txn r ON r.id = c.txn_id
    WHERE c.original_txn_id = o.id AND c.seq = g.seq AND r.state = 'CONFIRMED'
      AND r.id <> x.id;
    v_due := greatest(v_due, 0);
    IF g.effect = 'points' THEN
        v_card := ledger_account_ensure('card_points', o.card_id, NULL, NULL);
        v_issued := ledger_account_ensure('points_issued', NULL, v_merchant, v_network);
    ELSE
        v_card := ledger_account_ensure('card_credit', o.card_id, v_merchant, v_network);
        v_issued := ledger_account_ensure('credit_issued', NULL, v_merchant, v_network);
    END IF;
    SELECT credits_posted - debits_posted - debits_pending INTO v_avail
    FROM ledger_account WHERE id = v_card FOR UPDATE;
    v_taken := least(v_due, greatest(v_avail, 0));
    IF v_taken > 0 THEN
        PERFORM switch_transfer(CASE WHEN g.effect = 'points' THEN 'PTS' ELSE 'IRR' END,
                                g.effect || '_clawback', x.rrn, v_card, v_issued, v_taken);
    END IF;
    IF v_due > 0 THEN
        INSERT INTO txn_clawback (txn_id, original_txn_id, seq, due, taken)
        VALUES (x.id, o.id, g.seq, v_due, v_taken);
    END IF;
END $$;

-- Take back every store-credit and points grant's share for a confirmed refund.
CREATE FUNCTION switch_clawback(x txn, p_network bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    o      txn%ROWTYPE;
    g      txn_grant%ROWTYPE;
    v_done bigint;
BEGIN
    SELECT * INTO o FROM txn WHERE id = x.original_txn_id;
    SELECT coalesce(sum(amount_rial), 0) + x.amount_rial INTO v_done FROM txn
    WHERE original_txn_id = o.id AND kind = 'refund' AND state = 'CONFIRMED' AND id <> x.id;
    FOR g IN SELECT * FROM txn_grant WHERE txn_id = o.id
             AND effect IN ('cashback', 'top_up_bonus', 'points') ORDER BY seq LOOP
        PERFORM switch_clawback_grant(x, o, g, p_network, v_done);
    END LOOP;
END $$;

-- 0013's switch_post_txn, and a refund's clawback.
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
                            AND effect IN ('cashback', 'top_up_bonus', 'points'));
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
    END IF;
END $$;
