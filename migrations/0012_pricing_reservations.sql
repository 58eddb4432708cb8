-- Campaign pricing on the request path: the basis gains the campaigns, the member and the
-- limits; phase 1 checks it and reserves budgets and per-card daily amounts atomically.
--
-- Theory of operation. Python prices a purchase or top-up with the campaign engine
-- (switch/engine.py) on a *basis* that this database states: the merchant's fee plan and
-- the amount as before, and, when active campaigns are in scope of the terminal's merchant
-- and network, also those campaigns (id and version, so Python may cache parsed rules),
-- the member behind the card (tier, visits at this merchant, purchases in the network,
-- birthday, linked bank card BIN), what each rule already granted this card today (Tehran
-- day) and each budgeted campaign's remaining budget. Without campaigns in scope the basis
-- is exactly what it was, and a request stays one call.
--
-- The database accepts the price when the basis it sees equals the one priced on, except
-- the remaining budgets, which change under every concurrent purchase. For those it checks
-- what matters, under the campaign row's lock: each reservation fits what remains now, and
-- a grant that the stated remainder clipped (grant = stated remainder) was priced on the
-- true remainder. Otherwise it answers PRICE_AGAIN with the fresh basis, having written
-- nothing. The per-card, per-day amounts are compared exactly; an advisory lock per card
-- (by PAN hash) taken before the basis is read keeps two purchases of one card in order.
--
-- Reservations are written with the transaction: the campaign's budget_used_rial (or, for
-- points and entries, budget_used_units) grows by the rule's grant (the campaign table's
-- CHECKs refuse a budget overrun from any writer),
-- and card_rule_day by the card's grant for the day. A void, a hold expiry or a reversal
-- gives both back (switch_release_pricing); a confirm changes neither (a reservation that
-- is kept is a spend). Lock order: campaign rows (id order), card_rule_day, then ledger
-- accounts, except where the ledger must be read first (a store-credit purchase's credit,
-- a reversal's mirror): two requests of one card meeting in the other order deadlock, and
-- the switch retries the one Postgres cancels.

ALTER TYPE switch_auth ADD ATTRIBUTE pricing jsonb;  -- the engine's breakdown (phase1.py)

-- Points and lottery campaigns keep their budget (points, entries) in the spec; what they
-- reserved is counted here, as budget_used_rial counts the rial budgets, and a CHECK keeps
-- it within the budget whoever writes.
ALTER TABLE campaign
    ADD COLUMN budget_used_units bigint NOT NULL DEFAULT 0 CHECK (budget_used_units >= 0),
    ADD CONSTRAINT campaign_budget_units_within CHECK (budget_used_units <= coalesce(
        (spec->>'budget_points')::bigint, (spec->>'budget_entries')::bigint, 0));

-- A campaign's budget in its own unit (rials, points or entries; NULL: none) and its use.
CREATE FUNCTION campaign_budget(k campaign) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(k.budget_rial, (k.spec->>'budget_points')::bigint,
                    (k.spec->>'budget_entries')::bigint)
$$;

CREATE FUNCTION campaign_budget_left(k campaign) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT campaign_budget(k) - k.budget_used_rial - k.budget_used_units
$$;

-- The engine's breakdown of an approved purchase or top-up (grants, reservations, stamp
-- progress, lottery entries, rules fired); NULL when no campaign was in scope.
ALTER TABLE txn ADD COLUMN pricing jsonb;

-- What each rule granted per transaction and who pays it: for audit, the postings on
-- confirm and the cardholder's history.
CREATE TABLE txn_grant (
    txn_id      bigint NOT NULL REFERENCES txn (id),
    seq         smallint NOT NULL,
    rule_id     text NOT NULL,
    effect      text NOT NULL CHECK (effect IN ('discount', 'cashback', 'top_up_bonus',
                                                'points', 'lottery')),
    funder_kind text NOT NULL CHECK (funder_kind IN ('merchant', 'network', 'sponsor')),
    sponsor     text,
    amount      bigint NOT NULL CHECK (amount > 0),
    expires_at  timestamptz,  -- store credit and points: when the lot expires
    PRIMARY KEY (txn_id, seq),
    CHECK ((funder_kind = 'sponsor') = (sponsor IS NOT NULL))
);
CREATE INDEX txn_grant_rule_idx ON txn_grant (rule_id);

-- What a transaction holds against a campaign's budget and the card's daily limit.
CREATE TABLE txn_reservation (
    txn_id   bigint NOT NULL REFERENCES txn (id),
    rule_id  text NOT NULL,
    amount   bigint NOT NULL CHECK (amount > 0),
    budget   boolean NOT NULL,  -- counted in campaign.budget_used_rial (or _units)
    daily    boolean NOT NULL,  -- counted in card_rule_day
    pan_hash bytea NOT NULL,
    day      date NOT NULL,     -- the Tehran day of the purchase
    PRIMARY KEY (txn_id, rule_id)
);

-- Per card (club or bank, by PAN hash), rule and Tehran day: what the rule granted it.
CREATE TABLE card_rule_day (
    pan_hash bytea NOT NULL,
    rule_id  text NOT NULL,
    day      date NOT NULL,
    granted  bigint NOT NULL CHECK (granted >= 0),
    PRIMARY KEY (pan_hash, rule_id, day)
);

CREATE FUNCTION switch_local_day(p_now timestamptz) RETURNS date
LANGUAGE sql STABLE AS $$
    SELECT (p_now AT TIME ZONE 'Asia/Tehran')::date
$$;

-- The active campaigns in scope of the terminal's merchant, [[id, version], ...] by id.
CREATE FUNCTION switch_campaigns(t switch_terminal) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_array(c.id, c.version) ORDER BY c.id), '[]')
    FROM campaign c
    WHERE c.status = 'active'
      AND (c.merchant_id = t.merchant_id
           OR (c.merchant_id IS NULL AND c.network_id = t.network_id))
$$;

-- The member behind a club card as the engine reads it (rules.MemberState); NULL without
-- a card. Visits and purchases count every earlier purchase not voided.
CREATE FUNCTION switch_member_state(p_card bigint, t switch_terminal) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'tier', k.tier,
        'visits_at_merchant', (
            SELECT count(*) FROM txn x
            WHERE x.card_id IN (SELECT id FROM card WHERE member_id = k.member_id)
              AND x.merchant_id = t.merchant_id AND x.state <> 'VOIDED'
              AND x.kind IN ('bank_purchase', 'club_purchase', 'credit_purchase')),
        'purchases_in_network', (
            SELECT count(*) FROM txn x JOIN merchant m ON m.id = x.merchant_id
            WHERE x.card_id IN (SELECT id FROM card WHERE member_id = k.member_id)
              AND m.network_id IS NOT DISTINCT FROM t.network_id AND x.state <> 'VOIDED'
              AND x.kind IN ('bank_purchase', 'club_purchase', 'credit_purchase')),
        'birthday', mb.birth_date,
        'linked_bin', (SELECT b.pan_bin FROM bank_card b WHERE b.member_id = k.member_id
                       ORDER BY b.id DESC LIMIT 1))
    FROM card k JOIN member mb ON mb.id = k.member_id WHERE k.id = p_card
$$;

-- What remains of each budgeted campaign among `p_campaigns`, by id.
CREATE FUNCTION switch_remaining(p_campaigns jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_object_agg(k.id, campaign_budget_left(k)), '{}')
    FROM campaign k
    WHERE k.id IN (SELECT x->>0 FROM jsonb_array_elements(p_campaigns) x)
      AND campaign_budget(k) IS NOT NULL
$$;

-- The campaign part of the basis (see the top of this file).
CREATE FUNCTION switch_campaign_basis(r switch_request, t switch_terminal, c switch_card,
                                      p_card bigint, p_campaigns jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'campaigns', p_campaigns, 'merchant_id', t.merchant_id, 'network_id', t.network_id,
        'tid', t.tid, 'member', switch_member_state(p_card, t),
        'granted_today', (
            SELECT coalesce(jsonb_object_agg(d.rule_id, d.granted), '{}') FROM card_rule_day d
            WHERE d.pan_hash = c.pan_hash AND d.day = switch_local_day(r.now) AND d.granted > 0),
        'remaining', switch_remaining(p_campaigns))
$$;

-- Whether the budgeted reservations of `p` fit what remains now (see the top of this
-- file); locks those campaign rows, in id order, until the call ends.
CREATE FUNCTION switch_reservations_fit(p switch_auth) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_ok boolean;
BEGIN
    PERFORM 1 FROM campaign
    WHERE id IN (SELECT x->>'rule' FROM jsonb_array_elements(p.pricing->'reservations') x
                 WHERE (x->>'budget')::boolean)
    ORDER BY id FOR UPDATE;
    SELECT coalesce(bool_and(
               campaign_budget_left(k) >= (x->>'amount')::bigint
               AND ((x->>'amount')::bigint < (p.basis->'remaining'->>k.id)::bigint
                    OR campaign_budget_left(k) = (p.basis->'remaining'->>k.id)::bigint)), true)
    INTO v_ok
    FROM jsonb_array_elements(p.pricing->'reservations') x
    LEFT JOIN campaign k ON k.id = x->>'rule' AND campaign_budget(k) IS NOT NULL
    WHERE (x->>'budget')::boolean;
    RETURN coalesce(v_ok, false);
END $$;

-- NULL when `p` was priced on the basis this database sees (and its reservations fit),
-- else the basis to price again on. `p_amount` is what is priced (a partial approval's).
CREATE FUNCTION switch_check_price(r switch_request, t switch_terminal, c switch_card,
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
    -- Two purchases of one card in order: the daily amounts read below stay true.
    PERFORM pg_advisory_xact_lock(('x' || encode(substr(c.pan_hash, 1, 8), 'hex'))::bit(64)::bigint);
    v_basis := v_basis || switch_campaign_basis(r, t, c, p_card, v_campaigns);
    IF p.basis IS NULL OR (p.basis - 'remaining') IS DISTINCT FROM (v_basis - 'remaining') THEN
        RETURN v_basis;
    END IF;
    IF NOT switch_reservations_fit(p) THEN
        -- Read again under the lock: the remainders read above may have waited for it.
        RETURN v_basis || jsonb_build_object('remaining', switch_remaining(v_campaigns));
    END IF;
    RETURN NULL;
END $$;

-- Record an approved transaction's pricing and reserve its limits (after the checks).
CREATE FUNCTION switch_reserve(r switch_request, c switch_card, p switch_auth, p_txn bigint)
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
    INSERT INTO txn_reservation (txn_id, rule_id, amount, budget, daily, pan_hash, day)
    SELECT p_txn, x->>'rule', (x->>'amount')::bigint, (x->>'budget')::boolean,
           (x->>'daily')::boolean, c.pan_hash, switch_local_day(r.now)
    FROM jsonb_array_elements(p.pricing->'reservations') x;
    UPDATE campaign k
    SET budget_used_rial = k.budget_used_rial
                           + CASE WHEN k.budget_rial IS NULL THEN 0 ELSE v.amount END,
        budget_used_units = k.budget_used_units
                            + CASE WHEN k.budget_rial IS NULL THEN v.amount ELSE 0 END
    FROM txn_reservation v WHERE v.txn_id = p_txn AND v.budget AND k.id = v.rule_id;
    INSERT INTO card_rule_day AS d (pan_hash, rule_id, day, granted)
    SELECT v.pan_hash, v.rule_id, v.day, v.amount FROM txn_reservation v
    WHERE v.txn_id = p_txn AND v.daily ORDER BY v.rule_id
    ON CONFLICT (pan_hash, rule_id, day) DO UPDATE SET granted = d.granted + EXCLUDED.granted;
END $$;

-- Give back what a transaction reserved (void, expiry, reversal): nothing of it remains.
CREATE FUNCTION switch_release_pricing(x txn) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF x.pricing IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM campaign
    WHERE id IN (SELECT rule_id FROM txn_reservation WHERE txn_id = x.id AND budget)
    ORDER BY id FOR UPDATE;
    UPDATE campaign k
    SET budget_used_rial = k.budget_used_rial
                           - CASE WHEN k.budget_rial IS NULL THEN 0 ELSE v.amount END,
        budget_used_units = k.budget_used_units
                            - CASE WHEN k.budget_rial IS NULL THEN v.amount ELSE 0 END
    FROM txn_reservation v WHERE v.txn_id = x.id AND v.budget AND k.id = v.rule_id;
    UPDATE card_rule_day d SET granted = d.granted - v.amount
    FROM txn_reservation v
    WHERE v.txn_id = x.id AND v.daily AND d.pan_hash = v.pan_hash AND d.rule_id = v.rule_id
      AND d.day = v.day;
END $$;

-- The approved result of a purchase, with the quote and whether the card earns rewards.
CREATE FUNCTION switch_priced_result(p switch_auth, p_rewards boolean) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('quote', p.quote, 'rewards', p_rewards)
$$;

-- The purchase functions of 0007, each checking its price with switch_check_price and
-- recording its pricing with switch_reserve; otherwise unchanged.

CREATE OR REPLACE FUNCTION switch_bank_purchase(r switch_request, t switch_terminal,
                                                c switch_card, p switch_auth)
RETURNS switch_result LANGUAGE plpgsql AS $$
DECLARE
    b       record;
    v_again jsonb;
    v_rrn   text;
    v_txn   bigint;
BEGIN
    SELECT * INTO b FROM switch_bank_card(c, r.now);
    IF b.decline IS NOT NULL THEN
        RETURN switch_declined(b.decline);
    END IF;
    v_again := switch_check_price(r, t, c, p, p.amount, b.rewards_card_id);
    IF v_again IS NOT NULL THEN
        RETURN switch_price_again(v_again);
    END IF;
    v_rrn := switch_new_rrn();
    v_txn := switch_new_txn(r, t, p, v_rrn, b.rewards_card_id, c.pan_hash);
    PERFORM switch_reserve(r, c, p, v_txn);
    RETURN switch_approved(v_rrn, p.kind, v_txn,
                           switch_priced_result(p, b.rewards_card_id IS NOT NULL));
END $$;

CREATE OR REPLACE FUNCTION switch_club_purchase(r switch_request, t switch_terminal,
                                                c switch_card, p switch_auth)
RETURNS switch_result LANGUAGE plpgsql AS $$
DECLARE
    k        record;
    v_rial   bigint;
    v_pay    bigint;
    v_enough boolean;
    v_again  jsonb;
    v_rrn    text;
    v_txn    bigint;
BEGIN
    SELECT * INTO k FROM switch_club_card(c, t, r.now);
    IF k.decline IS NOT NULL THEN
        RETURN switch_declined(k.decline);
    END IF;
    v_again := switch_check_price(r, t, c, p, p.amount, k.card_id);
    IF v_again IS NOT NULL THEN
        RETURN switch_price_again(v_again);
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
    v_take      bigint;
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
    FOR s IN SELECT * FROM switch_credit_sources(k.card_id, t) WHERE account IS NOT NULL LOOP
        SELECT least(v_remaining, credits_posted - debits_posted - debits_pending)
        INTO v_take FROM ledger_account WHERE id = s.account;
        IF v_take > 0 THEN
            PERFORM switch_hold('credit_purchase', v_rrn, s.account,
                                ledger_account_ensure('credit_issued', NULL, s.merchant_id,
                                                      s.network_id),
                                v_take, r.now + t.hold_timeout);
            v_remaining := v_remaining - v_take;
        END IF;
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

CREATE OR REPLACE FUNCTION switch_topup(r switch_request, t switch_terminal, c switch_card,
                                        p switch_auth) RETURNS switch_result
LANGUAGE plpgsql AS $$
DECLARE
    k       record;
    v_rial  bigint;
    v_again jsonb;
    v_rrn   text;
    v_txn   bigint;
BEGIN
    SELECT * INTO k FROM switch_club_card(c, t, r.now);
    IF k.decline IS NOT NULL THEN
        RETURN switch_declined(k.decline);
    END IF;
    v_again := switch_check_price(r, t, c, p, p.amount, k.card_id);
    IF v_again IS NOT NULL THEN
        RETURN switch_price_again(v_again);
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

-- Hold expiry and reversal give the reservations back.
CREATE OR REPLACE FUNCTION switch_expire_txn(x txn, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM switch_release_pricing(x);
    PERFORM switch_resolve_holds(x.rrn, 'expire', p_now);
    PERFORM switch_release_refund(x);
    UPDATE txn SET state = 'VOIDED', voided_at = p_now, void_reason = 'expired' WHERE id = x.id;
END $$;

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
        PERFORM switch_release_pricing(x);
        PERFORM switch_resolve_holds(x.rrn, 'void', r.now);
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

-- The basis a purchase of `p_amount` at terminal `p_tid` would be priced on at `p_now`,
-- read only, for `loyalty admin quote`. `p_bank`: the PAN is a Shetab card (the club card
-- of the member who linked it earns), else a club card. `basis` is NULL for an unknown
-- terminal; `card_found` is false for an unknown club card.
CREATE FUNCTION switch_quote_basis(p_tid text, p_pan_hash bytea, p_bank boolean,
                                   p_amount bigint, p_now timestamptz,
                                   OUT basis jsonb, OUT card_found boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t           switch_terminal;
    r           switch_request;
    c           switch_card;
    v_card      bigint;
    v_campaigns jsonb;
BEGIN
    SELECT x.id, x.tid, x.ksn_counter_max, NULL::interval, m.id, m.status = 'active',
           m.network_id, m.fee_bp, m.fee_fixed_rial, m.fee_min_rial, m.fee_max_rial,
           m.shaparak_fee_exempt
    INTO t FROM terminal x JOIN merchant m ON m.id = x.merchant_id WHERE x.tid = p_tid;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_bank THEN
        SELECT k.id INTO v_card FROM bank_card b JOIN card k ON k.member_id = b.member_id
        WHERE b.pan_hash = p_pan_hash AND k.status = 'active' ORDER BY k.id DESC LIMIT 1;
        card_found := true;
    ELSE
        SELECT id INTO v_card FROM card WHERE pan_hash = p_pan_hash;
        card_found := FOUND;
    END IF;
    basis := switch_purchase_basis(t, p_amount);
    v_campaigns := switch_campaigns(t);
    IF v_campaigns <> '[]' THEN
        r.now := p_now;
        c.pan_hash := p_pan_hash;
        basis := basis || switch_campaign_basis(r, t, c, v_card, v_campaigns);
    END IF;
END $$;
