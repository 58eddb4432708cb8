-- Three fixes to the request path of 0012 (issue 5 audit, #2, #8 and #5).
--
-- 1. A reservation remembers its budget's unit. 0012 chose the counter to give a
--    reservation back to (budget_used_rial or budget_used_units) from the campaign's
--    current definition. After `campaign create --replace` took a rial budget away, a void,
--    reversal or hold expiry of a purchase reserved before then took the amount off
--    budget_used_units, below zero: the CHECK refused it, the terminal got 96 and the
--    sweeper failed on the same transaction every round. Now txn_reservation.budget_unit
--    ('rial', 'points' or 'entries') records the unit when the reservation is written, and
--    the release uses it. So a replace may drop or change a budget in the same unit. It may
--    not change the unit while reservations in the old one are live (switch/campaign_store.py
--    refuses that). Otherwise the counters of two units would add up in campaign_budget_left.
--    switch_reservations_fit now also checks that each campaign row it locks is the version
--    that was priced: a replace that commits between the basis read and the lock makes the
--    purchase price again. Before, a purchase could reserve against a budget that was no
--    longer there. Rows written before this migration get the unit of the campaign's budget
--    as it is now, or the kind's unit when it has none.
--
-- 2. Member state is read under a lock on the member. 0012 locked the card (an advisory lock
--    on its PAN hash) before reading the basis. But visits, purchases in the network and
--    stamp progress are the member's, and a member's club card and linked bank card have
--    different PAN hashes. So two purchases with them at once could both read the same visit
--    count and both get the Nth stamp's free visit, or the same first-purchases step.
--    switch_check_price now locks the member (when the card has one) before the card. This
--    is an advisory lock in the two-key space, which nothing else uses: the member id split
--    into its high and low 32 bits. The card lock stays: the daily amounts are per card, and
--    an unlinked bank card has no member.
--
-- 3. Store credit is spent soonest-expiring first across the card's accounts. 0012 took a
--    store-credit purchase from the merchant's credit first, then the network's, whatever
--    their lots' expiry. So the network's credit could expire while the merchant's
--    never-expiring credit was spent. switch_credit_draws now walks the open lots of all the
--    card's credit accounts usable at the merchant together, earliest expiry first (lots that
--    never expire last). On equal expiry the merchant's credit comes first, as before, then
--    the older lot. The part of each account's lots that its pending debits already hold is
--    skipped: on confirm those debits take the account's earliest lots (0013's trigger). The
--    purchase holds from each account what the walk takes from it; on confirm that debit
--    takes the account's earliest lots, as every debit does. A partial approval walks the
--    same lots for the payable of the amount it approves.
--
-- Lock order on the request path, complete:
--   the card's store-credit accounts (a store-credit purchase only: it must know what it
--   can approve before it prices) -> the member -> the card -> campaign rows (id order) ->
--   card_rule_day -> other ledger accounts.
-- Every request takes the member lock only in switch_check_price, before the card lock.
-- No request holds a campaign row, a daily amount or a ledger account when it asks for
-- either advisory lock. The one exception is a store-credit purchase, which holds only its
-- own card's credit accounts, and no holder of a member lock waits for those. So these two
-- locks add no cycle.

-- 1. Budget units ---------------------------------------------------------------------------

-- The unit of a campaign's budget; NULL when it has none.
CREATE FUNCTION campaign_budget_unit(k campaign) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN k.budget_rial IS NOT NULL THEN 'rial'
                WHEN k.spec->>'budget_points' IS NOT NULL THEN 'points'
                WHEN k.spec->>'budget_entries' IS NOT NULL THEN 'entries' END
$$;

ALTER TABLE txn_reservation ADD COLUMN budget_unit text;
UPDATE txn_reservation v
SET budget_unit = coalesce(campaign_budget_unit(k), CASE k.kind WHEN 'points' THEN 'points'
                                                               WHEN 'lottery' THEN 'entries'
                                                               ELSE 'rial' END)
FROM campaign k WHERE k.id = v.rule_id AND v.budget;
ALTER TABLE txn_reservation
    ADD CONSTRAINT txn_reservation_budget_unit CHECK (
        budget_unit IN ('rial', 'points', 'entries') AND budget
        OR budget_unit IS NULL AND NOT budget);
-- What a replace reads: the live budget reservations of one campaign.
CREATE INDEX txn_reservation_budget_idx ON txn_reservation (rule_id) WHERE budget;

-- 0012's check, and also: each locked campaign is the version priced (`p.basis`), and a
-- reservation against a campaign that has no budget now does not fit (0012 let it through
-- when every budgeted reservation of the purchase was such).
CREATE OR REPLACE FUNCTION switch_reservations_fit(p switch_auth) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_ok boolean;
BEGIN
    PERFORM 1 FROM campaign
    WHERE id IN (SELECT x->>'rule' FROM jsonb_array_elements(p.pricing->'reservations') x
                 WHERE (x->>'budget')::boolean)
    ORDER BY id FOR UPDATE;
    SELECT coalesce(bool_and(coalesce(
               campaign_budget_left(k) >= (x->>'amount')::bigint
               AND ((x->>'amount')::bigint < (p.basis->'remaining'->>k.id)::bigint
                    OR campaign_budget_left(k) = (p.basis->'remaining'->>k.id)::bigint),
               false)), true)
    INTO v_ok
    FROM jsonb_array_elements(p.pricing->'reservations') x
    LEFT JOIN campaign k ON k.id = x->>'rule' AND campaign_budget(k) IS NOT NULL
        AND k.version = (SELECT (c->>1)::bigint FROM jsonb_array_elements(p.basis->'campaigns') c
                         WHERE c->>0 = k.id)
    WHERE (x->>'budget')::boolean;
    RETURN v_ok;
END $$;

-- Record an approved transaction's pricing and reserve its limits (after the checks, which
-- locked the budgeted campaign rows): each budget reservation in its campaign's unit.
CREATE OR REPLACE FUNCTION switch_reserve(r switch_request, c switch_card, p switch_auth,
                                          p_txn bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p.pricing IS NULL THEN
        RETURN;
    END IF;
    UPDATE txn SET pricing = p.pricing WHERE id = p_txn;
    INSERT INTO txn_grant (txn_id, seq, rule_id, effect, funder_kind, sponsor, amount,
                           expires_at)
    SELECT p_txn, g.n, g.v->>'rule', g.v->>'effect', g.v->>'funder', g.v->>'sponsor',
           (g.v->>'amount')::bigint, (g.v->>'expires_at')::timestamptz
    FROM jsonb_array_elements(p.pricing->'grants') WITH ORDINALITY AS g (v, n);
    INSERT INTO txn_reservation (txn_id, rule_id, amount, budget, daily, pan_hash, day,
                                 budget_unit)
    SELECT p_txn, x->>'rule', (x->>'amount')::bigint, (x->>'budget')::boolean,
           (x->>'daily')::boolean, c.pan_hash, switch_local_day(r.now),
           CASE WHEN (x->>'budget')::boolean THEN campaign_budget_unit(k) END
    FROM jsonb_array_elements(p.pricing->'reservations') x
    LEFT JOIN campaign k ON k.id = x->>'rule';
    PERFORM switch_count_budgets(p_txn, 1);
    INSERT INTO card_rule_day AS d (pan_hash, rule_id, day, granted)
    SELECT v.pan_hash, v.rule_id, v.day, v.amount FROM txn_reservation v
    WHERE v.txn_id = p_txn AND v.daily ORDER BY v.rule_id
    ON CONFLICT (pan_hash, rule_id, day) DO UPDATE SET granted = d.granted + EXCLUDED.granted;
END $$;

-- Add (`p_sign` 1) or give back (-1) transaction `p_txn`'s budget reservations, each in
-- the counter of the unit it was reserved in.
CREATE FUNCTION switch_count_budgets(p_txn bigint, p_sign bigint) RETURNS void
LANGUAGE sql AS $$
    UPDATE campaign k
    SET budget_used_rial = k.budget_used_rial
                           + CASE WHEN v.budget_unit = 'rial' THEN p_sign * v.amount ELSE 0 END,
        budget_used_units = k.budget_used_units
                            + CASE WHEN v.budget_unit = 'rial' THEN 0 ELSE p_sign * v.amount END
    FROM txn_reservation v WHERE v.txn_id = p_txn AND v.budget AND k.id = v.rule_id
$$;

-- Give back what a transaction reserved (void, expiry, reversal): nothing of it remains.
CREATE OR REPLACE FUNCTION switch_release_pricing(x txn) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF x.pricing IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM campaign
    WHERE id IN (SELECT rule_id FROM txn_reservation WHERE txn_id = x.id AND budget)
    ORDER BY id FOR UPDATE;
    PERFORM switch_count_budgets(x.id, -1);
    UPDATE card_rule_day d SET granted = d.granted - v.amount
    FROM txn_reservation v
    WHERE v.txn_id = x.id AND v.daily AND d.pan_hash = v.pan_hash AND d.rule_id = v.rule_id
      AND d.day = v.day;
END $$;

-- 2. The member lock, and the price check that takes it ------------------------------------

-- Lock the member behind club card `p_card` until the transaction ends (see the top).
CREATE FUNCTION switch_lock_member(p_card bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock((k.member_id >> 32)::integer,
                                  k.member_id::bit(32)::integer)
    FROM card k WHERE k.id = p_card;
END $$;

-- 0012's check, locking the member before the card, and answering a campaign that changed
-- under the lock with the campaigns as they are now.
CREATE OR REPLACE FUNCTION switch_check_price(r switch_request, t switch_terminal, c switch_card,
                                              p switch_auth, p_amount bigint, p_card bigint)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_basis     jsonb := switch_purchase_basis(t, p_amount);
    v_campaigns jsonb := switch_campaigns(t);
BEGIN
    IF v_campaigns = '[]' THEN
        IF p.kind = 'topup' AND p.basis IS NULL THEN
            RETURN NULL;  -- a top-up without campaigns is not priced
        END IF;
        RETURN CASE WHEN p.basis IS DISTINCT FROM v_basis THEN v_basis END;
    END IF;
    -- Two purchases of one member, then of one card, in order: the member's state and the
    -- card's daily amounts read below stay true until this transaction ends.
    PERFORM switch_lock_member(p_card);
    PERFORM pg_advisory_xact_lock(('x' || encode(substr(c.pan_hash, 1, 8), 'hex'))::bit(64)::bigint);
    v_basis := v_basis || switch_campaign_basis(r, t, c, p_card, v_campaigns);
    IF p.basis IS NULL OR (p.basis - 'remaining') IS DISTINCT FROM (v_basis - 'remaining') THEN
        RETURN v_basis;
    END IF;
    IF NOT switch_reservations_fit(p) THEN
        -- Read again under the campaign locks: the remainders read above may have waited for
        -- them, and a campaign may have been replaced meanwhile.
        v_campaigns := switch_campaigns(t);
        RETURN v_basis || jsonb_build_object('campaigns', v_campaigns,
                                             'remaining', switch_remaining(v_campaigns));
    END IF;
    RETURN NULL;
END $$;

-- 3. Store credit, soonest expiring first --------------------------------------------------

-- What a store-credit purchase paying `p_payable` takes from each credit account of card
-- `p_card` usable at the terminal's merchant (see the top), in switch_credit_sources'
-- order; accounts it takes nothing from are left out. Call with those accounts locked.
CREATE FUNCTION switch_credit_draws(p_card bigint, t switch_terminal, p_payable bigint)
RETURNS TABLE (account bigint, merchant_id bigint, network_id bigint, amount bigint)
LANGUAGE sql STABLE AS $$
    WITH lot AS (
        SELECT s.account, s.merchant_id, s.network_id, s.n, l.id, l.expires_at,
               -- the lot's part that pending debits (which take the earliest lots) leave
               least(l.remaining, sum(l.remaining) OVER held - a.debits_pending) AS free
        FROM switch_credit_sources(p_card, t)
             WITH ORDINALITY AS s (account, merchant_id, network_id, n)
        JOIN ledger_account a ON a.id = s.account
        JOIN ledger_lot l ON l.account_id = s.account AND l.remaining > 0
        WINDOW held AS (PARTITION BY l.account_id ORDER BY l.expires_at NULLS LAST, l.id
                        ROWS UNBOUNDED PRECEDING)
    ), spend AS (
        SELECT account, merchant_id, network_id, n,
               least(free, greatest(p_payable - (sum(free) OVER walk - free), 0)) AS take
        FROM lot WHERE free > 0
        WINDOW walk AS (ORDER BY expires_at NULLS LAST, n, id ROWS UNBOUNDED PRECEDING)
    )
    SELECT account, merchant_id, network_id, sum(take)::bigint FROM spend
    GROUP BY account, merchant_id, network_id, n HAVING sum(take) > 0 ORDER BY n
$$;

-- 0012's store-credit purchase, holding what switch_credit_draws takes from each account
-- (the rest of its body is 0012's, restated: that is how a migration changes a function).
CREATE OR REPLACE FUNCTION switch_credit_purchase(r switch_request, t switch_terminal,
                                                  c switch_card, p switch_auth)
RETURNS switch_result LANGUAGE plpgsql AS $$
DECLARE
    k           record;
    s           record;
    v_accounts  bigint[];
    v_available bigint;
    v_approved  bigint;
    v_remaining bigint;
    v_again     jsonb;
    v_rrn       text;
    v_txn       bigint;
    v_result    jsonb;
BEGIN
    SELECT * INTO k FROM switch_club_card(c, t, r.now);
    IF k.decline IS NOT NULL THEN
        RETURN switch_declined(k.decline);
    END IF;
    v_accounts := ARRAY(SELECT account FROM switch_credit_sources(k.card_id, t)
                        WHERE account IS NOT NULL);
    -- Lock the card's credit accounts (in id order, as the ledger does) before reading them,
    -- so the holds below cannot be refused.
    SELECT coalesce(sum(credits_posted - debits_posted - debits_pending), 0) INTO v_available
    FROM (SELECT * FROM ledger_account WHERE id = ANY (v_accounts) ORDER BY id FOR UPDATE) a;
    v_approved := CASE WHEN v_available >= p.amount OR NOT p.partial_ok THEN p.amount
                       ELSE v_available END;
    IF v_approved <= 0 OR v_approved > v_available THEN
        RETURN switch_declined('INSUFFICIENT_FUNDS');
    END IF;
    v_again := switch_check_price(r, t, c, p, v_approved, k.card_id);
    IF v_again IS NOT NULL THEN
        RETURN switch_price_again(v_again);
    END IF;
    v_rrn := switch_new_rrn();
    v_remaining := (p.quote->>'payable')::bigint;
    FOR s IN SELECT * FROM switch_credit_draws(k.card_id, t, v_remaining) LOOP
        PERFORM switch_hold('credit_purchase', v_rrn, s.account,
                            ledger_account_ensure('credit_issued', NULL, s.merchant_id,
                                                  s.network_id),
                            s.amount, r.now + t.hold_timeout);
        v_remaining := v_remaining - s.amount;
    END LOOP;
    IF v_remaining <> 0 THEN
        RAISE EXCEPTION 'switch: credit read under lock no longer covers %', v_rrn;
    END IF;
    v_txn := switch_new_txn(r, t, p, v_rrn, k.card_id, c.pan_hash);
    PERFORM switch_reserve(r, c, p, v_txn);
    v_result := switch_priced_result(p, true) || jsonb_build_object(
        'balances', jsonb_build_object('credit', switch_totals(v_accounts)));
    IF v_approved < p.amount THEN
        RETURN ROW(jsonb_build_object('outcome', 'PARTIAL_APPROVAL', 'rrn', v_rrn,
                                      'kind', p.kind, 'approved', v_approved) || v_result,
                   v_txn)::switch_result;
    END IF;
    RETURN switch_approved(v_rrn, p.kind, v_txn, v_result);
END $$;
