-- Two blocks that the current request functions each wrote out more than once now have
-- one helper each. Nothing changes in what the functions do, write or answer.
--
-- 1. What a purchase or top-up checks first (0012). The bank, club and top-up functions
--    each checked the card (switch_bank_card or switch_club_card), then checked the price
--    (switch_check_price, PRICE_AGAIN when the basis differs), in the same eight lines.
--    switch_purchase_checks now runs both checks in the same order and returns the
--    refusal or the card that earns. switch_credit_purchase keeps its own two checks
--    because its funds check comes between them: it prices the amount it approves (a
--    partial approval's), and it needs the card to find that amount. It is not redefined
--    here.
-- 2. Which accounts a store-credit or points grant moves between (0013, 0017). The grant
--    posting (switch_post_pricing: issuer -> card) and its clawback (switch_clawback_grant:
--    card -> issuer) each chose the issuer (the funding merchant or network), the card
--    account and the unit. switch_grant_accounts now chooses them for both, so the two
--    cannot come to disagree on which accounts a grant uses. It ensures the issuer account
--    before the card account, as the posting always did. The clawback used the opposite
--    order. That does not matter, because both accounts exist by the time a refund takes
--    anything back: the original's confirm posted to them. The one exception is a merchant
--    that moved to another network since the purchase. Its refund reads the new network and
--    may create new accounts, and then only their ids come out in the other order.
--
-- What stays repeated: each function redefined here restates its whole body, because that
-- is how a migration changes a function. Bank, club and top-up also each have the four
-- lines that call switch_purchase_checks and return its refusal, because PL/pgSQL cannot
-- return from its caller.
--
-- Why: a change to the card checks, the price check or a grant's accounts was a change in
-- two to four places that had to stay the same. The cost is one more PL/pgSQL call for
-- each purchase and each posted grant (see the commit for the switch_bench numbers).

-- The checks a bank purchase, club purchase or top-up makes before it writes anything, in
-- the profile's order. First the card: a Shetab card for a bank purchase, otherwise a club
-- card of this terminal's network. Then the price of the whole amount (switch_check_price).
-- `refusal` is the answer when a check fails (the card's decline, or PRICE_AGAIN with the
-- basis). Otherwise `refusal` is NULL and `card_id` is the club card that earns: for a bank
-- purchase, the linked card, if there is one.
CREATE FUNCTION switch_purchase_checks(r switch_request, t switch_terminal, c switch_card,
                                       p switch_auth, OUT card_id bigint,
                                       OUT refusal switch_result)
LANGUAGE plpgsql AS $$
DECLARE
    v_decline text;
    v_again   jsonb;
BEGIN
    IF p.kind = 'bank_purchase' THEN
        SELECT b.rewards_card_id, b.decline INTO card_id, v_decline
        FROM switch_bank_card(c, r.now) b;
    ELSE
        SELECT k.card_id, k.decline INTO card_id, v_decline
        FROM switch_club_card(c, t, r.now) k;
    END IF;
    IF v_decline IS NOT NULL THEN
        refusal := switch_declined(v_decline);
        RETURN;
    END IF;
    v_again := switch_check_price(r, t, c, p, p.amount, card_id);
    IF v_again IS NOT NULL THEN
        refusal := switch_price_again(v_again);
    END IF;
END $$;

-- The accounts that grant `g` of transaction `o` moves between, and their unit. The issuer
-- is the funding merchant (o's) or network (`p_network`): credit_issued or points_issued.
-- The card account is card_credit under the same issuer, or card_points (points do not keep
-- an issuer in the card's key). Both accounts are created on first use, the issuer first.
CREATE FUNCTION switch_grant_accounts(g txn_grant, o txn, p_network bigint,
                                      OUT unit text, OUT issued bigint, OUT card bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_merchant bigint := CASE WHEN g.funder_kind = 'merchant' THEN o.merchant_id END;
    v_network  bigint := CASE WHEN g.funder_kind = 'network' THEN p_network END;
BEGIN
    IF g.effect = 'points' THEN
        unit := 'PTS';
        issued := ledger_account_ensure('points_issued', NULL, v_merchant, v_network);
        card := ledger_account_ensure('card_points', o.card_id, NULL, NULL);
    ELSE
        unit := 'IRR';
        issued := ledger_account_ensure('credit_issued', NULL, v_merchant, v_network);
        card := ledger_account_ensure('card_credit', o.card_id, v_merchant, v_network);
    END IF;
END $$;

-- 0012's purchase functions, with their first checks in switch_purchase_checks. A refusal
-- always has a result, so `(k.refusal).result IS NOT NULL` is true exactly when a check
-- failed. (`k.refusal IS NOT NULL` would need every field of the row, including txn_id,
-- to be set.)

CREATE OR REPLACE FUNCTION switch_bank_purchase(r switch_request, t switch_terminal,
                                                c switch_card, p switch_auth)
RETURNS switch_result LANGUAGE plpgsql AS $$
DECLARE
    k     record;
    v_rrn text;
    v_txn bigint;
BEGIN
    SELECT * INTO k FROM switch_purchase_checks(r, t, c, p);
    IF (k.refusal).result IS NOT NULL THEN
        RETURN k.refusal;
    END IF;
    v_rrn := switch_new_rrn();
    v_txn := switch_new_txn(r, t, p, v_rrn, k.card_id, c.pan_hash);
    PERFORM switch_reserve(r, c, p, v_txn);
    RETURN switch_approved(v_rrn, p.kind, v_txn,
                           switch_priced_result(p, k.card_id IS NOT NULL));
END $$;

CREATE OR REPLACE FUNCTION switch_club_purchase(r switch_request, t switch_terminal,
                                                c switch_card, p switch_auth)
RETURNS switch_result LANGUAGE plpgsql AS $$
DECLARE
    k        record;
    v_rial   bigint;
    v_pay    bigint;
    v_enough boolean;
    v_rrn    text;
    v_txn    bigint;
BEGIN
    SELECT * INTO k FROM switch_purchase_checks(r, t, c, p);
    IF (k.refusal).result IS NOT NULL THEN
        RETURN k.refusal;
    END IF;
    v_pay := (p.quote->>'payable')::bigint;
    -- Checked under the account's lock, before anything is written: a decline leaves nothing.
    v_rial := ledger_account_find('card_rial', k.card_id, NULL, NULL);
    SELECT credits_posted - debits_posted - debits_pending >= v_pay INTO v_enough
    FROM ledger_account WHERE id = v_rial FOR UPDATE;
    IF v_enough IS NOT TRUE AND v_pay > 0 THEN  -- no rial account at all is no funds either
        RETURN switch_declined('INSUFFICIENT_FUNDS');
    END IF;
    v_rrn := switch_new_rrn();
    IF v_pay > 0 THEN
        PERFORM switch_hold('club_purchase', v_rrn, v_rial,
                            ledger_account_ensure('merchant_payable', NULL, t.merchant_id, NULL),
                            v_pay, r.now + t.hold_timeout);
    END IF;
    v_txn := switch_new_txn(r, t, p, v_rrn, k.card_id, c.pan_hash);
    PERFORM switch_reserve(r, c, p, v_txn);
    RETURN switch_approved(v_rrn, p.kind, v_txn, switch_priced_result(p, true) || jsonb_build_object(
        'balances', jsonb_build_object('rial', switch_totals(ARRAY[v_rial]))));
END $$;

CREATE OR REPLACE FUNCTION switch_topup(r switch_request, t switch_terminal, c switch_card,
                                        p switch_auth) RETURNS switch_result
LANGUAGE plpgsql AS $$
DECLARE
    k      record;
    v_rial bigint;
    v_rrn  text;
    v_txn  bigint;
BEGIN
    SELECT * INTO k FROM switch_purchase_checks(r, t, c, p);
    IF (k.refusal).result IS NOT NULL THEN
        RETURN k.refusal;
    END IF;
    v_rrn := switch_new_rrn();
    v_rial := ledger_account_ensure('card_rial', k.card_id, NULL, NULL);
    PERFORM switch_hold('topup', v_rrn,
                        ledger_account_ensure('merchant_payable', NULL, t.merchant_id, NULL),
                        v_rial, p.amount, r.now + t.hold_timeout);
    v_txn := switch_new_txn(r, t, p, v_rrn, k.card_id, c.pan_hash);
    PERFORM switch_reserve(r, c, p, v_txn);
    RETURN switch_approved(v_rrn, p.kind, v_txn, jsonb_build_object(
        'balances', jsonb_build_object('rial', switch_totals(ARRAY[v_rial])))
        || CASE WHEN p.pricing IS NULL THEN '{}'::jsonb
                ELSE switch_priced_result(p, true) END);
END $$;

-- 0013's grant posting, with the accounts from switch_grant_accounts. Cashback and top-up
-- bonus are posted under their effect as the code, and points under 'points', which is
-- also the effect.
CREATE OR REPLACE FUNCTION switch_post_pricing(x txn, p_network bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g          txn_grant%ROWTYPE;
    a          record;
    v_transfer bigint;
BEGIN
    FOR g IN SELECT * FROM txn_grant WHERE txn_id = x.id ORDER BY seq LOOP
        IF g.effect = 'discount' AND g.funder_kind <> 'merchant' THEN
            PERFORM switch_transfer('IRR', 'discount', x.rrn,
                CASE WHEN g.funder_kind = 'sponsor'
                     THEN ledger_sponsor_account_ensure('discount_funding', g.sponsor)
                     ELSE ledger_account_ensure('discount_funding', NULL, NULL, p_network) END,
                ledger_account_ensure('merchant_payable', NULL, x.merchant_id, NULL), g.amount);
        ELSIF g.effect IN ('cashback', 'top_up_bonus', 'points') THEN
            SELECT * INTO a FROM switch_grant_accounts(g, x, p_network);
            v_transfer := switch_transfer(a.unit, g.effect, x.rrn, a.issued, a.card, g.amount);
            UPDATE ledger_lot SET expires_at = g.expires_at WHERE transfer_id = v_transfer;
        END IF;
    END LOOP;
END $$;

-- 0017's clawback of one grant, taking back from the accounts the grant was posted to
-- (switch_grant_accounts).
CREATE OR REPLACE FUNCTION switch_clawback_grant(x txn, o txn, g txn_grant, p_network bigint,
                                                 p_done bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a       record;
    v_due   bigint;
    v_avail bigint;
    v_taken bigint;
BEGIN
    SELECT switch_share_due(g.amount, p_done, (o.quote->>'payable')::bigint)
           - coalesce(sum(c.due), 0) INTO v_due
    FROM txn_clawback c JOIN txn r ON r.id = c.txn_id
    WHERE c.original_txn_id = o.id AND c.seq = g.seq AND r.state = 'CONFIRMED'
      AND r.id <> x.id;
    v_due := greatest(v_due, 0);
    SELECT * INTO a FROM switch_grant_accounts(g, o, p_network);
    SELECT credits_posted - debits_posted - debits_pending INTO v_avail
    FROM ledger_account WHERE id = a.card FOR UPDATE;
    v_taken := least(v_due, greatest(v_avail, 0));
    IF v_taken > 0 THEN
        PERFORM switch_transfer(a.unit, g.effect || '_clawback', x.rrn, a.card, a.issued,
                                v_taken);
    END IF;
    IF v_due > 0 THEN
        INSERT INTO txn_clawback (txn_id, original_txn_id, seq, due, taken)
        VALUES (x.id, o.id, g.seq, v_due, v_taken);
    END IF;
END $$;
