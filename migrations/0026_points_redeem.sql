-- Points are spent by converting them into store credit of their issuer (issue 5).
--
-- The terminal contract has no processing code that spends points; 009200 spends store
-- credit, "gift credit / points value". So a member spends points in two steps: the operator
-- (acting for the member: member app, call centre) converts any part of one issuer's points
-- into that issuer's store credit, at the issuer's points value; the member then spends the
-- credit with 009200 at the issuer (its stores, or any store of its network) like any other.
--
-- * points_value: what one point of an issuer is worth, in whole rials. An issuer is a
--   merchant or a store network: the owner of the points_issued account that granted the
--   points (0013). Rials per point is a whole number, so P points are worth exactly P times
--   it and nothing is rounded.
-- * A points lot's issuer is the points_issued account of the transfer that opened it, else
--   (a balance from before lots, the demo seed's points) the card network's, as 0014's expiry
--   reads it. A lot due at the redemption's time is not redeemable: the sweeper's next
--   round expires it.
-- * switch_redeem_points converts `p_points` of one issuer's points on one card, in the
--   caller's transaction:
--   1. locks the card's points account and its credit account of that issuer, in id order
--      (the ledger's order); the card account's lock also guards its lots (0013);
--   2. a redemption already stored under the same request id is answered as stored
--      ('repeated'), or refused when it was for something else ('conflict');
--   3. refuses ('no_value', 'not_enough', 'too_much') having posted nothing (the caller
--      rolls a refusal back, with any empty account the call created);
--   4. posts card_points -> points_issued of the issuer, P points, then credit_issued ->
--      card_credit of the issuer, P x value rials, both code 'points_redeem' and ref
--      'redeem:<id>' (a points_redemption row). The points debit draws the issuer's open
--      lots earliest expiring first. The credit opens one lot per distinct expiry among the
--      points it drew, expiring with them: a redemption neither extends a deadline nor cuts
--      one short; points that never expire give credit that never expires.
--   The lot trigger (0013; 0021 records each draw in ledger_lot_draw, which step 4 reads)
--   takes a debit from all the account's open lots, earliest expiring first, whoever issued
--   them. A redemption must take only its issuer's redeemable lots: under the lock, the
--   other open lots are set aside (remaining 0, no draw recorded) for its one debit and put
--   back right after, in the same transaction, so no other transaction ever sees them aside
--   and every lot's draws still account for what it lost. Doing it here rather than in the
--   trigger leaves the trigger, which every debit runs, as it is.

CREATE TABLE points_value (
    id             bigserial PRIMARY KEY,
    merchant_id    bigint UNIQUE REFERENCES merchant (id),
    network_id     bigint UNIQUE REFERENCES store_network (id),
    rial_per_point bigint NOT NULL CHECK (rial_per_point > 0),
    updated_at     timestamptz NOT NULL,
    CHECK ((merchant_id IS NULL) <> (network_id IS NULL))
);

CREATE TABLE points_redemption (
    id             bigserial PRIMARY KEY,
    request_id     text UNIQUE CHECK (length(request_id) BETWEEN 1 AND 64),  -- NULL: none given
    card_id        bigint NOT NULL REFERENCES card (id),
    merchant_id    bigint REFERENCES merchant (id),
    network_id     bigint REFERENCES store_network (id),
    points         bigint NOT NULL CHECK (points > 0),
    rial_per_point bigint NOT NULL CHECK (rial_per_point > 0),
    rial           bigint NOT NULL CHECK (rial = points * rial_per_point),
    created_at     timestamptz NOT NULL,
    CHECK ((merchant_id IS NULL) <> (network_id IS NULL))
);
CREATE INDEX points_redemption_card_idx ON points_redemption (card_id);

-- The open lots of card account `p_account` (points, of a card of network `p_network`), and
-- whether each is redeemable for issuer `p_issued` at `p_now`: issued by it, and not due.
-- A lot's issuer is the points_issued account of the transfer that opened it, else the card
-- network's (as 0014's expiry reads it).
CREATE FUNCTION switch_points_lots(p_account bigint, p_network bigint, p_issued bigint,
                                   p_now timestamptz)
RETURNS TABLE (id bigint, remaining bigint, expires_at timestamptz, ours boolean)
LANGUAGE sql STABLE AS $$
    SELECT l.id, l.remaining, l.expires_at,
           coalesce(coalesce((SELECT e.account_id FROM ledger_entry e
                              JOIN ledger_account i
                                ON i.id = e.account_id AND i.kind = 'points_issued'
                              WHERE e.transfer_id = l.transfer_id LIMIT 1),
                             ledger_account_find('points_issued', NULL, NULL, p_network))
                    = p_issued, false)
           AND (l.expires_at IS NULL OR l.expires_at > p_now)
    FROM ledger_lot l WHERE l.account_id = p_account AND l.remaining > 0
$$;

CREATE TYPE switch_redemption AS (
    status         text,    -- ok | repeated | conflict | no_value | not_enough | too_much
    redemption_id  bigint,  -- ok, repeated
    points         bigint,  -- ok, repeated: converted; not_enough: the issuer's redeemable
    rial           bigint,  -- ok, repeated: credited
    rial_per_point bigint   -- ok, repeated, too_much: the issuer's value
);

-- Lots' remaining amounts: `p_remaining` for each of `p_ids`.
CREATE FUNCTION switch_lots_set(p_ids bigint[], p_remaining bigint[]) RETURNS void
LANGUAGE sql AS $$
    UPDATE ledger_lot l SET remaining = s.remaining
    FROM unnest(p_ids, p_remaining) AS s (id, remaining) WHERE l.id = s.id;
$$;

-- Post redemption `r` (step 4 at the top of this file) between the card's points account
-- and the issuer's, and the issuer's credit accounts.
CREATE FUNCTION switch_redeem_post(r points_redemption, p_card_points bigint,
                                   p_points_issued bigint, p_card_credit bigint,
                                   p_credit_issued bigint, p_network bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_ref      text := 'redeem:' || r.id;
    v_aside    bigint[];
    v_kept     bigint[];
    v_debit    bigint;
    v_transfer bigint;
    g          record;
BEGIN
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(remaining), '{}')
    INTO v_aside, v_kept
    FROM switch_points_lots(p_card_points, p_network, p_points_issued, r.created_at)
    WHERE NOT ours;
    PERFORM switch_lots_set(v_aside, array_fill(0::bigint, ARRAY[cardinality(v_aside)]));
    v_debit := switch_transfer('PTS', 'points_redeem', v_ref, p_card_points, p_points_issued,
                               r.points);
    PERFORM switch_lots_set(v_aside, v_kept);
    FOR g IN  -- what the debit drew (0021 records it), per expiry
        SELECT l.expires_at, sum(w.amount)::bigint AS drawn
        FROM ledger_lot_draw w JOIN ledger_lot l ON l.id = w.lot_id
        WHERE w.transfer_id = v_debit GROUP BY l.expires_at ORDER BY 1 NULLS LAST
    LOOP
        v_transfer := switch_transfer('IRR', 'points_redeem', v_ref, p_credit_issued,
                                      p_card_credit, g.drawn * r.rial_per_point);
        UPDATE ledger_lot SET expires_at = g.expires_at WHERE transfer_id = v_transfer;
    END LOOP;
END $$;

-- Convert `p_points` of the issuer's points on card `p_card` into its store credit (see the
-- top of this file). The issuer is merchant `p_merchant` or network `p_network`; the card
-- must exist and be active (the caller checks). At most `p_max_rial` of credit.
CREATE FUNCTION switch_redeem_points(p_card bigint, p_merchant bigint, p_network bigint,
                                     p_points bigint, p_request_id text, p_now timestamptz,
                                     p_max_rial bigint) RETURNS switch_redemption
LANGUAGE plpgsql AS $$
DECLARE
    v_card_network bigint := (SELECT network_id FROM card WHERE id = p_card);
    v_points       bigint := ledger_account_ensure('card_points', p_card, NULL, NULL);
    v_credit       bigint := ledger_account_ensure('card_credit', p_card, p_merchant, p_network);
    v_issued       bigint := ledger_account_ensure('points_issued', NULL, p_merchant, p_network);
    v_value        bigint;
    v_ours         bigint;
    r              points_redemption%ROWTYPE;
BEGIN
    PERFORM 1 FROM ledger_account WHERE id IN (v_points, v_credit) ORDER BY id FOR UPDATE;
    SELECT * INTO r FROM points_redemption WHERE request_id = p_request_id;
    IF FOUND THEN
        RETURN CASE WHEN (r.card_id, r.merchant_id, r.network_id, r.points)
                         IS NOT DISTINCT FROM (p_card, p_merchant, p_network, p_points)
                    THEN ROW('repeated', r.id, r.points, r.rial, r.rial_per_point)::switch_redemption
                    ELSE ROW('conflict', r.id, NULL, NULL, NULL)::switch_redemption END;
    END IF;
    SELECT rial_per_point INTO v_value FROM points_value
    WHERE merchant_id IS NOT DISTINCT FROM p_merchant AND network_id IS NOT DISTINCT FROM p_network;
    IF NOT FOUND THEN
        RETURN ROW('no_value', NULL, NULL, NULL, NULL)::switch_redemption;
    END IF;
    SELECT coalesce(sum(remaining) FILTER (WHERE ours), 0) INTO v_ours
    FROM switch_points_lots(v_points, v_card_network, v_issued, p_now);
    -- Points held by a pending debit are not available either (none is placed today).
    v_ours := least(v_ours, (SELECT credits_posted - debits_posted - debits_pending
                             FROM ledger_account WHERE id = v_points));
    IF p_points > v_ours THEN
        RETURN ROW('not_enough', NULL, v_ours, NULL, NULL)::switch_redemption;
    END IF;
    IF p_points::numeric * v_value > p_max_rial THEN
        RETURN ROW('too_much', NULL, NULL, NULL, v_value)::switch_redemption;
    END IF;
    INSERT INTO points_redemption (request_id, card_id, merchant_id, network_id, points,
                                   rial_per_point, rial, created_at)
    VALUES (p_request_id, p_card, p_merchant, p_network, p_points, v_value,
            p_points * v_value, p_now)
    ON CONFLICT (request_id) DO NOTHING RETURNING * INTO r;
    IF NOT FOUND THEN  -- the same request id, committed meanwhile for another card
        RETURN ROW('conflict', NULL, NULL, NULL, NULL)::switch_redemption;
    END IF;
    PERFORM switch_redeem_post(r, v_points, v_issued, v_credit,
                               ledger_account_ensure('credit_issued', NULL, p_merchant, p_network),
                               v_card_network);
    RETURN ROW('ok', r.id, r.points, r.rial, r.rial_per_point)::switch_redemption;
END $$;
