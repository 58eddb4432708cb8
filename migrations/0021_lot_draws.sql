-- Credit given back to a card returns to the lots it came from, with their expiry; refunds
-- report what they take back; a refund's network fee is reckoned when it is confirmed.
--
-- 1. Lot draws. Until now every posted credit to a card_credit or card_points account
--    opened a new lot that never expires, including the credit that a reversal after
--    confirm or a refund gives back. A member could turn expiring credit into credit that
--    never expires by spending it and refunding the purchase. Now every lot movement is a
--    row of ledger_lot_draw (append-only): `amount` > 0 takes from the lot (a debit),
--    `amount` < 0 gives back to it (a credit); `undoes` names the row a movement cancels.
--    What still stands of a row is its size less what still stands of the rows undoing it
--    (ledger_lot_left; chains are at most three long: a purchase's draw, a refund's give-
--    back, the take-back of the refund's reversal).
--    * A debit takes open lots earliest expiring first (never-expiring last, then oldest),
--      as before; a lot expiry takes its own lot first. A refund's clawback first takes the
--      lots its purchase opened (the cashback it takes back), so a refund cannot leave the
--      purchase's late-expiring cashback standing and take an earlier-expiring lot instead.
--    * A refund's credit (a store-credit purchase refunded) gives back to the draws of its
--      purchase on that account, in the order the purchase drew them (the range
--      [refunded, refunded + amount) of the purchase's spending order, as the refund's
--      split among issuers already reads it), each up to what still stands of it.
--    * A reversal after confirm of transaction R (ledger_mirror, code 'reversal', ref R)
--      undoes R on each account: it gives back every draw of R that still stands, takes
--      back what R's give-backs put into lots (from those lots as far as they still hold
--      it, the rest from the earliest expiring lots, recorded as undoing the give-back)
--      and what remains of the lots R opened; what is left of the net amount is taken
--      earliest expiring first.
--    A give-back never lifts a lot above its amount. What a credit cannot give back opens
--    a new lot: the purchase's draws were made before this migration, so they are unknown,
--    or other give-backs refilled its lots meanwhile. That lot expires with the latest-expiring lot the account held before the
--    original transaction, and never if one of those never expires (or there were none):
--    the credit came out of those lots, so that bound never cuts a member's credit short,
--    and it cannot outlive everything the purchase could have spent. A lot given back
--    after its expiry is expired back to its issuer by the sweeper's next round
--    (switch_expire_lots, 0014, unchanged). Draws made before this migration are recorded
--    as one row per lot without a transfer, so every lot's rows sum to what it lost.
-- 2. A refund's 0110 and 0230 report the store credit and points it takes back (field 54
--    amount types 94 and 95, sign D): the 0110 what it owes if confirmed now, the 0230 what
--    it took (txn_clawback.taken), whenever the purchase earned either.
-- 3. A refund's network fee. Phase 1 priced it on the original's refunded amount, which
--    counts PENDING refunds; when one of those was voided, the refunds that were priced
--    after it had counted its amount, and the fees given back could exceed the purchase's
--    fee. The fee a refund gives back is now reckoned on confirm, like its clawback (0017):
--    the share of the fee owed once the standing (confirmed) refunds and this one are
--    refunded, less what the standing refunds already gave back, never below zero; the
--    refund that completes the payable gives back the rest, so the fees of the standing
--    refunds sum to the purchase's fee exactly. The refund's quote is updated to it before
--    its confirm posts it.

CREATE TABLE ledger_lot_draw (
    id          bigserial PRIMARY KEY,
    lot_id      bigint NOT NULL REFERENCES ledger_lot (id),
    transfer_id bigint REFERENCES ledger_transfer (id),  -- NULL: drawn before this migration
    amount      bigint NOT NULL CHECK (amount <> 0),     -- > 0 taken from, < 0 given back
    undoes      bigint REFERENCES ledger_lot_draw (id)
);
CREATE INDEX ledger_lot_draw_lot_idx ON ledger_lot_draw (lot_id);
CREATE INDEX ledger_lot_draw_transfer_idx ON ledger_lot_draw (transfer_id);
CREATE INDEX ledger_lot_draw_undoes_idx ON ledger_lot_draw (undoes) WHERE undoes IS NOT NULL;
CREATE FUNCTION ledger_lot_draw_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger is append-only: % on ledger_lot_draw refused', TG_OP
        USING ERRCODE = 'raise_exception';
END $$;
CREATE TRIGGER ledger_lot_draw_append_only BEFORE UPDATE OR DELETE ON ledger_lot_draw
    FOR EACH ROW EXECUTE FUNCTION ledger_lot_draw_append_only();

INSERT INTO ledger_lot_draw (lot_id, amount)
SELECT id, amount - remaining FROM ledger_lot WHERE remaining < amount ORDER BY id;

-- Move `p_amount` out of lot `p_lot` (> 0) or back into it (< 0), and record it.
CREATE FUNCTION ledger_lot_move(p_lot bigint, p_transfer bigint, p_amount bigint,
                                p_undoes bigint) RETURNS void LANGUAGE sql AS $$
    UPDATE ledger_lot SET remaining = remaining - p_amount WHERE id = p_lot;
    INSERT INTO ledger_lot_draw (lot_id, transfer_id, amount, undoes)
    VALUES (p_lot, p_transfer, p_amount, p_undoes);
$$;

-- What still stands of movement `p_id` of size `p_amount` (see the top of this file).
CREATE FUNCTION ledger_lot_left(p_id bigint, p_amount bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT abs(p_amount) - coalesce(sum(abs(u.amount) - coalesce(
        (SELECT sum(abs(v.amount)) FROM ledger_lot_draw v WHERE v.undoes = u.id), 0)), 0)
    FROM ledger_lot_draw u WHERE u.undoes = p_id
$$;

-- Take `p_amount` from the account's open lots: lot `p_first_lot`, then the lots opened
-- under `p_first_ref`, then earliest expiring first (never-expiring last, then oldest).
CREATE FUNCTION ledger_lot_take(p_account bigint, p_transfer bigint, p_amount bigint,
                                p_first_lot bigint, p_first_ref text, p_undoes bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_left bigint := p_amount;
    v_take bigint;
    l      record;
BEGIN
    FOR l IN
        SELECT id, remaining FROM ledger_lot
        WHERE account_id = p_account AND remaining > 0
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
            p_account, p_amount;
    END IF;
END $$;

-- Give back to the account's lots, up to `p_max` (NULL: all), what the draws of the
-- transfers under `p_ref` (but this one and reversals) took and still stands, in the order
-- they drew; never above a lot's amount. Returns what was given back.
CREATE FUNCTION ledger_lot_give_back(p_account bigint, p_transfer bigint, p_ref text,
                                     p_max bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_given bigint := 0;
    v_give  bigint;
    d       record;
BEGIN
    FOR d IN
        SELECT w.id, w.lot_id, ledger_lot_left(w.id, w.amount) AS left_
        FROM ledger_transfer t
        JOIN ledger_lot_draw w ON w.transfer_id = t.id AND w.amount > 0
        JOIN ledger_lot l ON l.id = w.lot_id AND l.account_id = p_account
        WHERE t.ref = p_ref AND t.id <> p_transfer AND t.code <> 'reversal'
        ORDER BY w.id
    LOOP
        EXIT WHEN v_given = p_max;
        SELECT least(d.left_, amount - remaining, coalesce(p_max - v_given, d.left_))
        INTO v_give FROM ledger_lot WHERE id = d.lot_id;
        CONTINUE WHEN v_give <= 0;
        PERFORM ledger_lot_move(d.lot_id, p_transfer, -v_give, d.id);
        v_given := v_given + v_give;
    END LOOP;
    RETURN v_given;
END $$;

-- The expiry of credit given back that no draw takes (see the top of this file): the
-- latest expiry of the account's lots opened before the transaction `p_ref`, NULL (never)
-- if one of them never expires or there were none.
CREATE FUNCTION ledger_lot_bound_expiry(p_account bigint, p_ref text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN bool_or(l.expires_at IS NULL) THEN NULL ELSE max(l.expires_at) END
    FROM ledger_lot l
    WHERE l.account_id = p_account AND (l.transfer_id IS NULL OR l.transfer_id <
        (SELECT min(t.id) FROM ledger_transfer t WHERE t.ref = p_ref))
$$;

-- Credit `p_amount` that no draw takes: a new lot, expiring as ledger_lot_bound_expiry
-- says when it gives back for transaction `p_original`, else never (the caller may set it).
CREATE FUNCTION ledger_lot_open(p_account bigint, p_transfer bigint, p_ref text,
                                p_amount bigint, p_original text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO ledger_lot (account_id, transfer_id, ref, amount, remaining, expires_at)
    VALUES (p_account, p_transfer, p_ref, p_amount, p_amount,
            CASE WHEN p_original IS NOT NULL
                 THEN ledger_lot_bound_expiry(p_account, p_original) END);
$$;

-- A reversal's entry of `p_credit` (< 0: a debit) on the account undoes transaction
-- `p_ref` there (see the top of this file).
CREATE FUNCTION ledger_lot_reverse(p_account bigint, p_transfer bigint, p_ref text,
                                   p_credit bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_need bigint := p_credit - ledger_lot_give_back(p_account, p_transfer, p_ref, NULL);
    v_take bigint;
    d      record;
BEGIN
    FOR d IN  -- what the transaction gave back, then the lots it opened, as far as there
        SELECT w.id, w.lot_id, ledger_lot_left(w.id, w.amount) AS left_
        FROM ledger_transfer t
        JOIN ledger_lot_draw w ON w.transfer_id = t.id AND w.amount < 0
        JOIN ledger_lot l ON l.id = w.lot_id AND l.account_id = p_account
        WHERE t.ref = p_ref AND t.id <> p_transfer AND t.code <> 'reversal'
        UNION ALL
        SELECT NULL, id, remaining FROM ledger_lot
        WHERE account_id = p_account AND ref = p_ref AND transfer_id <> p_transfer
        ORDER BY 1 NULLS LAST, 2
    LOOP
        SELECT least(d.left_, remaining) INTO v_take FROM ledger_lot WHERE id = d.lot_id;
        CONTINUE WHEN v_take <= 0;
        PERFORM ledger_lot_move(d.lot_id, p_transfer, v_take, d.id);
        v_need := v_need + v_take;
    END LOOP;
    FOR d IN  -- the rest of its give-backs, from the earliest expiring lots
        SELECT w.id, ledger_lot_left(w.id, w.amount) AS left_
        FROM ledger_transfer t
        JOIN ledger_lot_draw w ON w.transfer_id = t.id AND w.amount < 0
        JOIN ledger_lot l ON l.id = w.lot_id AND l.account_id = p_account
        WHERE t.ref = p_ref AND t.id <> p_transfer AND t.code <> 'reversal' ORDER BY w.id
    LOOP
        EXIT WHEN v_need >= 0;
        v_take := least(d.left_, -v_need);
        CONTINUE WHEN v_take <= 0;
        PERFORM ledger_lot_take(p_account, p_transfer, v_take, NULL, NULL, d.id);
        v_need := v_need + v_take;
    END LOOP;
    IF v_need < 0 THEN
        PERFORM ledger_lot_take(p_account, p_transfer, -v_need, NULL, NULL, NULL);
    ELSIF v_need > 0 THEN
        PERFORM ledger_lot_open(p_account, p_transfer, p_ref, v_need, p_ref);
    END IF;
END $$;

-- 0013's lot trigger, recording every movement (see the top of this file).
CREATE OR REPLACE FUNCTION ledger_lot_entry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_kind     text;
    v_tkind    text;
    v_code     text;
    v_ref      text;
    v_original text;  -- for a refund's postings, the RRN of the purchase it refunds
    v_left     bigint;
BEGIN
    SELECT kind INTO v_kind FROM ledger_account WHERE id = NEW.account_id;
    IF v_kind NOT IN ('card_credit', 'card_points') THEN
        RETURN NULL;
    END IF;
    SELECT kind, code, ref INTO v_tkind, v_code, v_ref
    FROM ledger_transfer WHERE id = NEW.transfer_id;
    IF v_tkind NOT IN ('single', 'post') THEN
        RETURN NULL;  -- holds and their voids move no posted balance
    END IF;
    IF v_code = 'reversal' THEN
        PERFORM ledger_lot_reverse(NEW.account_id, NEW.transfer_id, v_ref, -NEW.amount);
        RETURN NULL;
    END IF;
    IF length(v_ref) = 12 THEN
        SELECT o.rrn INTO v_original FROM txn r JOIN txn o ON o.id = r.original_txn_id
        WHERE r.rrn = v_ref::char(12) AND r.kind = 'refund';
    END IF;
    IF NEW.amount > 0 THEN
        PERFORM ledger_lot_take(NEW.account_id, NEW.transfer_id, NEW.amount,
            CASE WHEN v_code = 'lot_expiry' THEN substr(v_ref, 5)::bigint END, v_original,
            NULL);
        RETURN NULL;
    END IF;
    v_left := -NEW.amount;
    IF v_original IS NOT NULL THEN
        v_left := v_left - ledger_lot_give_back(NEW.account_id, NEW.transfer_id, v_original,
                                                v_left);
    END IF;
    IF v_left > 0 THEN
        PERFORM ledger_lot_open(NEW.account_id, NEW.transfer_id, v_ref, v_left, v_original);
    END IF;
    RETURN NULL;
END $$;

-- 2. What a refund takes back.

-- What refund `x` owes of grant `g` of its purchase `o` if confirmed now: the share owed once
-- the standing refunds and `x` are refunded, less what the standing refunds owed (0017).
CREATE FUNCTION switch_clawback_due(o txn, g txn_grant, x txn) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT greatest(switch_share_due(g.amount, s.done + x.amount_rial,
                                     (o.quote->>'payable')::bigint) - s.owed, 0)
    FROM (SELECT coalesce(sum(r.amount_rial), 0)::bigint AS done,
                 coalesce(sum((SELECT c.due FROM txn_clawback c
                               WHERE c.txn_id = r.id AND c.seq = g.seq)), 0) AS owed
          FROM txn r WHERE r.original_txn_id = o.id AND r.kind = 'refund'
            AND r.state = 'CONFIRMED' AND r.id <> x.id) AS s
$$;

-- For field 54 (types 94 and 95, sign D): the store credit and points refund `x` takes back,
-- what it took once confirmed (`p_confirmed`), else what it owes if confirmed now. NULL when
-- its purchase earned neither.
CREATE FUNCTION switch_clawback_amounts(x txn, p_confirmed boolean) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'credit', coalesce(sum(a.amount) FILTER (WHERE g.effect <> 'points'), 0),
        'points', coalesce(sum(a.amount) FILTER (WHERE g.effect = 'points'), 0))
    FROM txn o
    JOIN txn_grant g ON g.txn_id = o.id AND g.effect IN ('cashback', 'top_up_bonus', 'points'),
    LATERAL (SELECT CASE WHEN p_confirmed
                         THEN (SELECT c.taken FROM txn_clawback c
                               WHERE c.txn_id = x.id AND c.seq = g.seq)
                         ELSE switch_clawback_due(o, g, x) END AS amount) AS a
    WHERE o.id = x.original_txn_id
    HAVING count(*) > 0
$$;

-- An approved refund's 0110 carries what it takes back.
CREATE FUNCTION switch_refund_clawback(s switch_result) RETURNS switch_result
LANGUAGE plpgsql AS $$
DECLARE
    x txn%ROWTYPE;
    v jsonb;
BEGIN
    IF s.txn_id IS NULL THEN
        RETURN s;  -- declined, or price again
    END IF;
    SELECT * INTO x FROM txn WHERE id = s.txn_id;
    v := switch_clawback_amounts(x, false);
    IF v IS NULL THEN
        RETURN s;
    END IF;
    RETURN ROW(s.result || jsonb_build_object('clawback', v), s.txn_id)::switch_result;
END $$;

-- 0007's switch_authorize, a refund's 0110 with what it takes back.
CREATE OR REPLACE FUNCTION switch_authorize(r switch_request, t switch_terminal, c switch_card,
                                            p switch_auth) RETURNS switch_result
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT t.merchant_active THEN
        RETURN switch_declined('NOT_PERMITTED_TO_TERMINAL');
    END IF;
    IF p.kind = 'inquiry' THEN
        RETURN switch_balance_inquiry(r, t, c);
    END IF;
    IF p.amount <= 0 THEN
        RETURN switch_declined('INVALID_AMOUNT');
    END IF;
    CASE p.kind
        WHEN 'bank_purchase' THEN RETURN switch_bank_purchase(r, t, c, p);
        WHEN 'club_purchase' THEN RETURN switch_club_purchase(r, t, c, p);
        WHEN 'credit_purchase' THEN RETURN switch_credit_purchase(r, t, c, p);
        WHEN 'topup' THEN RETURN switch_topup(r, t, c, p);
        WHEN 'refund' THEN RETURN switch_refund_clawback(switch_refund(r, t, c, p));
    END CASE;
END $$;

-- 0015's switch_confirm; a refund's fee is reckoned before it is posted (part 3 below), and
-- its 0230 carries what it took back.
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
        IF x.kind = 'refund' THEN
            x.quote := switch_refund_quote(x);
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
        'balances', switch_txn_balances(x, t))
        || CASE WHEN x.kind = 'refund' THEN jsonb_strip_nulls(jsonb_build_object(
               'clawback', switch_clawback_amounts(x, true))) ELSE '{}' END);
END $$;

-- 3. A refund's network fee, reckoned on confirm.

-- The fee refund `x` gives back (see the top of this file). The caller holds the lock on
-- the refunded purchase, so refunds of one purchase are reckoned one at a time.
CREATE FUNCTION switch_refund_fee(x txn) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT greatest(switch_share_due((o.quote->>'network_fee')::bigint,
                                     s.done + x.amount_rial, (o.quote->>'payable')::bigint)
                    - s.given, 0)
    FROM txn o,
         LATERAL (SELECT coalesce(sum(r.amount_rial), 0)::bigint AS done,
                         coalesce(sum((r.quote->>'network_fee')::bigint), 0) AS given
                  FROM txn r WHERE r.original_txn_id = o.id AND r.kind = 'refund'
                    AND r.state = 'CONFIRMED' AND r.id <> x.id) AS s
    WHERE o.id = x.original_txn_id
$$;

-- Refund `x`'s quote with the fee it gives back, stored before its confirm posts it
-- (0017's switch_post_txn posts the quote's fee). Locks the purchase first, as the refund's
-- phase 1 and switch_post_txn do (lock order).
CREATE FUNCTION switch_refund_quote(x txn) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_quote jsonb;
BEGIN
    PERFORM 1 FROM txn WHERE id = x.original_txn_id FOR UPDATE;
    UPDATE txn SET quote = jsonb_set(quote, '{network_fee}', to_jsonb(switch_refund_fee(x)))
    WHERE id = x.id RETURNING quote INTO v_quote;
    RETURN v_quote;
END $$;
