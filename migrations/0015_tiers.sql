-- Member tiers reviewed on confirm, by rolling 12-month spend or points.
--
-- A store network may have a tier policy (tier_policy): for bronze, silver and gold, the
-- rolling 12-month spend that earns it, and optionally the points that earn it instead.
-- When a purchase by a club card (or a linked bank card) of such a network is confirmed,
-- the card's tier is reviewed as switch/tiers.py `review_tier` does: up at once to the
-- tier earned, down one step at most per review. Spend is what the member's cards paid
-- (the payable amount, less what was refunded) on confirmed purchases in the 12 months
-- up to the confirm; points are those campaigns granted on such purchases. Networks
-- without a policy keep tiers as the admin sets them.

ALTER TABLE card DROP CONSTRAINT card_tier_check,
    ADD CONSTRAINT card_tier_check CHECK (tier IN ('member', 'bronze', 'silver', 'gold'));

CREATE TABLE tier_policy (
    network_id        bigint PRIMARY KEY REFERENCES store_network (id),
    bronze_spend_rial bigint NOT NULL CHECK (bronze_spend_rial >= 0),
    silver_spend_rial bigint NOT NULL,
    gold_spend_rial   bigint NOT NULL,
    bronze_points     bigint CHECK (bronze_points >= 0),  -- NULL: not reachable by points
    silver_points     bigint CHECK (silver_points >= 0),
    gold_points       bigint CHECK (gold_points >= 0),
    CHECK (bronze_spend_rial <= silver_spend_rial AND silver_spend_rial <= gold_spend_rial)
);

-- tiers.earned_tier then tiers.review_tier, on the tier names the card table keeps.
CREATE FUNCTION tier_review(p_current text, p_spend bigint, p_points bigint, p tier_policy)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    WITH ranks (name, rank) AS (
        VALUES ('member', 0), ('bronze', 1), ('silver', 2), ('gold', 3)),
    earned AS (
        SELECT CASE
            WHEN p_spend >= p.gold_spend_rial OR p_points >= p.gold_points THEN 3
            WHEN p_spend >= p.silver_spend_rial OR p_points >= p.silver_points THEN 2
            WHEN p_spend >= p.bronze_spend_rial OR p_points >= p.bronze_points THEN 1
            ELSE 0 END AS rank)
    SELECT r.name FROM ranks r, ranks c, earned e
    WHERE c.name = p_current
      AND r.rank = CASE WHEN e.rank >= c.rank THEN e.rank ELSE c.rank - 1 END
$$;

-- Review the tier of the card that earned on confirmed transaction `x` (see the top).
CREATE FUNCTION switch_review_tier(x txn, p_now timestamptz) RETURNS void
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
           coalesce(sum((SELECT sum(g.amount) FROM txn_grant g
                         WHERE g.txn_id = y.id AND g.effect = 'points')), 0)
    INTO v_spend, v_points
    FROM txn y
    WHERE y.card_id IN (SELECT id FROM card WHERE member_id = k.member_id)
      AND y.state = 'CONFIRMED' AND y.confirmed_at > p_now - interval '12 months'
      AND y.kind IN ('bank_purchase', 'club_purchase', 'credit_purchase');
    UPDATE card SET tier = tier_review(k.tier, v_spend, v_points, p)
    WHERE id = k.id AND tier <> tier_review(k.tier, v_spend, v_points, p);
END $$;

-- switch_confirm of 0007, reviewing the tier after a purchase is posted.
CREATE OR REPLACE FUNCTION switch_confirm(r switch_request, t switch_terminal, a switch_advice)
RETURNS switch_result LANGUAGE plpgsql AS $$
DECLARE
    x txn%ROWTYPE;
BEGIN
    SELECT * INTO x FROM txn WHERE rrn = a.rrn FOR UPDATE;
    IF NOT FOUND OR x.terminal_id <> t.terminal_id OR x.stan <> a.original_stan
       OR x.transmitted_at <> a.original_transmitted_at THEN
        RETURN switch_declined('ORIGINAL_NOT_FOUND');
    END IF;
    IF a.processing_code <> x.processing_code OR a.amount <> x.amount_rial THEN
        RETURN switch_declined('INVALID_AMOUNT');  -- field 3 or 4 differs from the original
    END IF;
    IF x.state = 'VOIDED' THEN
        RETURN switch_declined(CASE WHEN x.void_reason = 'expired' THEN 'TOO_LATE'
                                    ELSE 'INVALID_TRANSACTION' END);
    END IF;
    IF x.state = 'PENDING' THEN
        IF r.now >= x.hold_expires_at THEN
            PERFORM switch_expire_txn(x, r.now);
            RETURN ROW(jsonb_build_object('outcome', 'TOO_LATE', 'rrn', x.rrn), x.id)::switch_result;
        END IF;
        PERFORM switch_post_txn(x, r.now);
        UPDATE txn SET state = 'CONFIRMED', confirmed_at = r.now WHERE id = x.id;
        IF x.card_id IS NOT NULL
           AND x.kind IN ('bank_purchase', 'club_purchase', 'credit_purchase') THEN
            PERFORM switch_review_tier(x, r.now);
        END IF;
    END IF;
    -- A repeated confirm of a CONFIRMED transaction answers 00 again with the same amounts.
    RETURN switch_approved(x.rrn, x.kind, x.id, jsonb_build_object(
        'quote', x.quote, 'rewards', x.card_id IS NOT NULL,
        'balances', switch_txn_balances(x, t)));
END $$;
