-- Periodic tier review, for members who stopped buying.
--
-- 0015 reviews a card's tier only when one of its member's purchases is confirmed, so a
-- gold member who never buys again would stay gold for ever. The sweeper
-- (switch/sweeper.py) now also calls switch_sweep_tiers: in one bounded batch it reviews
-- the cards above the lowest tier, of networks with a tier policy, that were not reviewed
-- by it in the last 30 days, with 0015's own switch_review_tier (the same rule: down one
-- step per review), and stamps them with tier_swept_at so that the next batch moves on.
-- One step down per 30 days is the damping 0015 applies per purchase. Cards are claimed
-- with FOR UPDATE SKIP LOCKED, so two sweepers never review the same card at once.

ALTER TABLE card ADD COLUMN tier_swept_at timestamptz;

-- Review up to `p_max` cards due at `p_now`; how many were reviewed (changed or not).
CREATE FUNCTION switch_sweep_tiers(p_now timestamptz, p_max integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    k card%ROWTYPE;
    x txn%ROWTYPE;  -- switch_review_tier reads only the card of the transaction it gets
    n integer := 0;
BEGIN
    FOR k IN
        SELECT * FROM card c
        WHERE c.tier <> 'member'
          AND (c.tier_swept_at IS NULL OR c.tier_swept_at <= p_now - interval '30 days')
          AND EXISTS (SELECT 1 FROM tier_policy p WHERE p.network_id = c.network_id)
        ORDER BY c.tier_swept_at NULLS FIRST, c.id
        LIMIT p_max
        FOR UPDATE SKIP LOCKED
    LOOP
        x.card_id := k.id;
        PERFORM switch_review_tier(x, p_now);
        UPDATE card SET tier_swept_at = p_now WHERE id = k.id;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
