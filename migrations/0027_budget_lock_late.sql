-- Campaign budget rows are locked last on the request path (issue 5).
--
-- Before: switch_check_price locked every budgeted campaign row of a purchase (FOR UPDATE,
-- in switch_reservations_fit) right after reading the basis, before the purchase held any
-- funds or wrote anything, and kept the locks until commit. So every purchase of a network
-- queued on its network-wide campaign's row for the whole of its own ledger holds,
-- transaction row, grants and reservations. Profiled with `bench.switch_bench --campaigns
-- both` (track_functions), switch_reservations_fit took 55 to 70 % of the database's
-- request time, nearly all of it waiting for those locks.
--
-- Now a purchase checks its reservations twice:
-- 1. Early, unlocked (switch_reservations_fit, same test as before): a purchase priced on
--    remainders that no longer hold is answered PRICE_AGAIN before it writes anything, as
--    before. That is the usual case when a budget runs out.
-- 2. Last, under the locks (switch_take_budgets, the last step of switch_reserve): it locks
--    the budgeted campaign rows in id order, runs the same test on what they hold now, and
--    only then counts the reservations in. If another purchase took the budget in between,
--    it raises serialization_failure (40001). That undoes everything the request wrote, and
--    the switch runs the request again, as it does after a deadlock (`db_retries_max`). The
--    new run fails the early check and is priced again on the fresh remainders.
-- A budget still cannot be exceeded: the test that decides runs under the row locks, and
-- the campaign table's CHECKs refuse an overrun from any writer.
--
-- A campaign row is now held only from the reservation to commit. Measured in one session
-- (three runs each, interleaved, docs/pricing.md "What campaigns cost: the bench"): the
-- wait per purchase for the rows fell from a median of 15.5 ms to 8.5 ms, and the
-- database's request time with it. What is left is mostly the commit's WAL flush, which
-- any lock held to commit includes (with synchronous_commit off, a test only, the wait was
-- 1 ms or less either way); throughput stayed within the machine's noise.
--
-- Lock order on the request path, complete (replaces 0025's):
--   the card's store-credit accounts (a store-credit purchase only) -> the member -> the
--   card -> the card's other ledger accounts (holds) -> card_rule_day -> campaign rows (id
--   order), last.
-- The give-backs follow it: a void, a hold expiry and a reversal resolve or mirror the
-- ledger first, then give back the daily amounts, then lock the campaign rows. So a request
-- that holds a campaign row waits for nothing but campaign rows later in id order. One case
-- is left: the sweeper expires a batch in one transaction, so while it resolves the ledger
-- of a later transaction in the batch it may hold a campaign row from an earlier one. A
-- purchase of that later transaction's card can then deadlock with it; Postgres cancels
-- one, the switch retries the request, the sweeper its next round.
--
-- Functions changed: switch_reservations_fit (no lock), switch_take_budgets (new),
-- switch_reserve (budgets last, through switch_take_budgets), and, with only their order
-- changed, switch_release_pricing (0025's), switch_expire_txn and switch_reverse (0012's).

-- 0025's test, without the lock: whether the budgeted reservations of `p` fit what remains
-- in the campaign rows this statement sees, each row being the version priced.
CREATE OR REPLACE FUNCTION switch_reservations_fit(p switch_auth) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(bool_and(coalesce(
               campaign_budget_left(k) >= (x->>'amount')::bigint
               AND ((x->>'amount')::bigint < (p.basis->'remaining'->>k.id)::bigint
                    OR campaign_budget_left(k) = (p.basis->'remaining'->>k.id)::bigint),
               false)), true)
    FROM jsonb_array_elements(p.pricing->'reservations') x
    LEFT JOIN campaign k ON k.id = x->>'rule' AND campaign_budget(k) IS NOT NULL
        AND k.version = (SELECT (c->>1)::bigint FROM jsonb_array_elements(p.basis->'campaigns') c
                         WHERE c->>0 = k.id)
    WHERE (x->>'budget')::boolean
$$;

-- Count transaction `p_txn`'s budget reservations in, under the campaign rows' locks (id
-- order), if they still fit; else 40001 (see the top).
CREATE FUNCTION switch_take_budgets(p switch_auth, p_txn bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM campaign
    WHERE id IN (SELECT rule_id FROM txn_reservation WHERE txn_id = p_txn AND budget)
    ORDER BY id FOR UPDATE;
    -- A new statement: it sees what the purchases this one waited for committed.
    IF NOT switch_reservations_fit(p) THEN
        RAISE EXCEPTION 'switch: a campaign budget of transaction % was taken meanwhile', p_txn
            USING ERRCODE = 'serialization_failure';
    END IF;
    PERFORM switch_count_budgets(p_txn, 1);
END $$;

-- 0025's reservation, with the daily amounts before the budgets and the budgets last.
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
    INSERT INTO card_rule_day AS d (pan_hash, rule_id, day, granted)
    SELECT v.pan_hash, v.rule_id, v.day, v.amount FROM txn_reservation v
    WHERE v.txn_id = p_txn AND v.daily ORDER BY v.rule_id
    ON CONFLICT (pan_hash, rule_id, day) DO UPDATE SET granted = d.granted + EXCLUDED.granted;
    PERFORM switch_take_budgets(p, p_txn);
END $$;

-- 0025's give-back, with the daily amounts before the campaign rows.
CREATE OR REPLACE FUNCTION switch_release_pricing(x txn) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF x.pricing IS NULL THEN
        RETURN;
    END IF;
    UPDATE card_rule_day d SET granted = d.granted - v.amount
    FROM txn_reservation v
    WHERE v.txn_id = x.id AND v.daily AND d.pan_hash = v.pan_hash AND d.rule_id = v.rule_id
      AND d.day = v.day;
    PERFORM 1 FROM campaign
    WHERE id IN (SELECT rule_id FROM txn_reservation WHERE txn_id = x.id AND budget)
    ORDER BY id FOR UPDATE;
    PERFORM switch_count_budgets(x.id, -1);
END $$;

-- 0012's hold expiry, resolving the holds before it gives the reservations back.
CREATE OR REPLACE FUNCTION switch_expire_txn(x txn, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM switch_resolve_holds(x.rrn, 'expire', p_now);
    PERFORM switch_release_pricing(x);
    PERFORM switch_release_refund(x);
    UPDATE txn SET state = 'VOIDED', voided_at = p_now, void_reason = 'expired' WHERE id = x.id;
END $$;

-- 0012's reversal; a pending original's holds are voided before its reservations are
-- given back (after confirm the ledger already came first).
CREATE OR REPLACE FUNCTION switch_reverse(r switch_request, t switch_terminal, a switch_advice)
RETURNS switch_result LANGUAGE plpgsql AS $$
DECLARE
    x txn%ROWTYPE;
BEGIN
    SELECT * INTO x FROM txn
    WHERE terminal_id = t.terminal_id AND stan = a.original_stan
      AND transmitted_at = a.original_transmitted_at
    FOR UPDATE;
    IF NOT FOUND THEN
        -- The original never arrived (or is unknown): acknowledge, and remember it so that
        -- the original is declined if it comes later.
        INSERT INTO reversal_memo (terminal_id, stan, transmitted_at)
        VALUES (t.terminal_id, a.original_stan, a.original_transmitted_at)
        ON CONFLICT DO NOTHING;
        RETURN ROW(jsonb_build_object('outcome', 'APPROVED'), NULL)::switch_result;
    END IF;
    IF a.processing_code <> x.processing_code OR a.amount <> x.amount_rial THEN
        RETURN switch_declined('INVALID_AMOUNT');
    END IF;
    IF x.state = 'PENDING' THEN
        PERFORM switch_resolve_holds(x.rrn, 'void', r.now);
        PERFORM switch_release_pricing(x);
    ELSIF x.state = 'CONFIRMED' THEN
        -- After confirm, by exact compensating entries, while not settled nor refunded.
        IF x.settlement_window_id IS NOT NULL OR x.refunded_rial > 0 THEN
            RETURN switch_declined('INVALID_TRANSACTION');  -- the merchant refunds instead
        END IF;
        IF ledger_mirror(x.rrn, 'reversal') = 'exceeds_credits' THEN
            RETURN switch_declined('INSUFFICIENT_FUNDS');  -- the card spent what it got
        END IF;
        PERFORM switch_release_pricing(x);
    END IF;
    IF x.state <> 'VOIDED' THEN
        PERFORM switch_release_refund(x);
        UPDATE txn SET state = 'VOIDED', voided_at = r.now, void_reason = 'reversal'
        WHERE id = x.id;
    END IF;
    RETURN ROW(jsonb_build_object('outcome', 'APPROVED', 'rrn', x.rrn), x.id)::switch_result;
END $$;
