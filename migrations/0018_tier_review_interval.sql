-- The periodic tier review's spacing becomes a setting.
--
-- 0016's switch_sweep_tiers(p_now, p_max) reviewed a card at most once per 30 days, a
-- figure written into its SQL, while every other limit of the switch is a named, validated
-- setting. The sweeper (switch/sweeper.py) now passes the spacing from the setting
-- `tier_review_interval_days` (default 30, so nothing changes unless an operator says so),
-- and its batch bound from `tier_review_batch_max` instead of the hold sweeper's.
--
-- Theory of operation, otherwise as in 0016: in one bounded batch, switch_sweep_tiers
-- reviews the cards above the lowest tier, of networks with a tier policy, that it has not
-- reviewed within `p_interval` before `p_now`, with 0015's switch_review_tier (down one
-- step per review), and stamps them with tier_swept_at so that the next batch moves on.
-- A card reviewed at t is therefore due again at t + p_interval, not before: one step down
-- per interval at most. Cards are claimed with FOR UPDATE SKIP LOCKED, so two sweepers
-- never review the same card at once and neither waits for the other.
--
-- The two-argument function is dropped rather than kept beside the new one, so that no
-- caller can go on using the fixed 30 days by mistake.

DROP FUNCTION switch_sweep_tiers(timestamptz, integer);

-- Review up to `p_max` cards due at `p_now`; how many were reviewed (changed or not).
CREATE FUNCTION switch_sweep_tiers(p_now timestamptz, p_max integer, p_interval interval)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    k card%ROWTYPE;
    x txn%ROWTYPE;  -- switch_review_tier reads only the card of the transaction it gets
    n integer := 0;
BEGIN
    -- A zero or negative spacing would review the same cards at every round (down to the
    -- lowest tier in as many rounds as there are steps): refuse it, whoever calls.
    IF p_interval IS NULL OR p_interval <= interval '0' THEN
        RAISE EXCEPTION 'switch_sweep_tiers: interval must be positive, not %', p_interval;
    END IF;
    FOR k IN
        SELECT * FROM card c
        WHERE c.tier <> 'member'
          AND (c.tier_swept_at IS NULL OR c.tier_swept_at <= p_now - p_interval)
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
