-- The request path in one database call per request.
--
-- Theory of operation. Python (switch/processor.py) decodes a request, derives its keys,
-- checks its MAC, decrypts field 62, hashes the PAN and prices the purchase
-- (switch/pricing.py). Everything that needs the database is then one call of
-- `switch_handle`, in its own implicit transaction, which
--   1. locks the device's terminal row. An unknown or inactive device, or one whose BDK is
--      retired, is refused. The lock also puts every request of one device, from every
--      switch process, in one order: a concurrent duplicate waits here, then finds the
--      first one's answer in step 2;
--   2. looks the identity (terminal, STAN, field 7) up in request_log: a request seen before
--      gets what is stored there, and nothing else happens;
--   3. checks a new request in the profile's order: field 7 within the clock window,
--      (0100 only: the original of a remembered reversal is answered 12 here), KSN counter,
--      field 62, TID;
--   4. does the business step (switch_authorize, switch_confirm, switch_reverse);
--   5. raises the device's KSN counter, stores the outcome (request_log.result) under the
--      identity and returns it.
-- Every check and every expected decline is decided before anything is written, so a
-- refusal (step 1 or 3) simply returns, having written nothing, and no savepoint is needed
-- on any common path (only a reversal after confirm, whose mirror must be all or nothing
-- across units, uses one). Exceptions are bugs: the call rolls back and the switch answers
-- 96. Python builds the response from the request and `result` alone, deterministically,
-- and writes it once the call has returned, i.e. after the commit; a retransmission rebuilt
-- from the stored result gets the identical bytes, even after a restart.
--
-- Prices are computed in Python. A 0100 carries its quote and the basis it was priced on
-- (the amount, the merchant's fee plan, or a refunded original's figures). When the basis
-- the database sees differs (first purchase of a device, a changed fee plan, a partial
-- approval, a refund), the call returns outcome PRICE_AGAIN with the right basis, having
-- written nothing; Python prices that basis and calls again.
--
-- `result` is a JSON object: "outcome" (a protocol.fields.ResponseCode name; declines are
-- named as switch/declines.py names them), then, where they apply, "rrn", "kind", "quote"
-- (pricing.Quote), "rewards" (a club card earns rewards), "approved" (a partial approval's
-- amount) and "balances" ({"rial" | "credit" | "points": [debits pending, debits posted,
-- credits pending, credits posted]}).

-- Rows stored from now on keep the outcome instead of the response bytes.
ALTER TABLE request_log
    ALTER COLUMN response DROP NOT NULL,
    ADD COLUMN result jsonb,
    ADD CONSTRAINT request_log_response_or_result CHECK ((response IS NULL) <> (result IS NULL));

-- The outcomes the request functions produce and their response codes (what request_log
-- records). Named as protocol.fields.ResponseCode names them; a test checks they agree.
CREATE TABLE request_outcome (
    name          text PRIMARY KEY,
    response_code char(2) NOT NULL UNIQUE
);
INSERT INTO request_outcome (name, response_code) VALUES
    ('APPROVED', '00'), ('DO_NOT_HONOUR', '05'), ('PARTIAL_APPROVAL', '10'),
    ('INVALID_TRANSACTION', '12'), ('INVALID_AMOUNT', '13'), ('INVALID_CARD_NUMBER', '14'),
    ('ORIGINAL_NOT_FOUND', '25'), ('INSUFFICIENT_FUNDS', '51'), ('EXPIRED_CARD', '54'),
    ('NOT_PERMITTED_TO_CARD', '57'), ('NOT_PERMITTED_TO_TERMINAL', '58'),
    ('RESTRICTED_CARD', '62'), ('TOO_LATE', '68'), ('DUPLICATE_TRANSMISSION', '94'),
    ('TIME_OUT_OF_WINDOW', '97');

-- What every request brings (processor.py fills it).
CREATE TYPE switch_request AS (
    bdk_id          char(8),       -- the device's initial key ID, hex: BDK ID ...
    derivation_id   char(8),       -- ... and derivation ID
    mti             char(4),
    stan            char(6),
    transmission_f7 char(10),
    transmitted_at  timestamptz,   -- field 7 resolved near `now`; NULL: not a real date
    digest          bytea,         -- processor.request_digest: tells retransmissions apart
    ksn             bytea,
    ksn_counter     bigint,
    fresh           boolean,       -- field 7 is within the accepted skew of `now`
    now             timestamptz,   -- the switch's clock
    hold_timeout_s  integer        -- the switch's default; a terminal's own setting wins
);

-- Field 62 as the switch read it (NULL when the request has none).
CREATE TYPE switch_card AS (
    tid       text,     -- the TID inside field 62
    error     text,     -- why field 62 did not decrypt (a SecurityError kind), else NULL
    pan_hash  bytea,    -- the keyed hash of the PAN; NULL without a PAN (sign-on)
    pan_bin   text,     -- the PAN's first six digits
    expiry    text,     -- YYMM as field 62 gives it
    luhn_ok   boolean
);

-- A 0100's own data, and its price.
CREATE TYPE switch_auth AS (
    kind             text,      -- bank_purchase | club_purchase | credit_purchase | topup
                                -- | refund | inquiry
    processing_code  char(6),
    amount           bigint,    -- field 4
    partial_ok       boolean,   -- field 48 PA=1
    original_rrn     text,      -- field 48 OR (refunds)
    refund_of        text,      -- the kind of purchase this refund's processing code undoes
    bank_window      interval,  -- how long a Shaparak purchase may be confirmed
    basis            jsonb,     -- what `quote` was priced on; NULL: not priced yet
    quote            jsonb      -- pricing.Quote.to_json()
);

-- A 0220's or 0400's own data.
CREATE TYPE switch_advice AS (
    processing_code          char(6),
    amount                   bigint,
    rrn                      text,         -- field 37
    original_stan            char(6),      -- field 90
    original_transmitted_at  timestamptz   -- field 90's field 7, resolved; NULL: not a date
);

-- The device, as locked for this request.
CREATE TYPE switch_terminal AS (
    terminal_id      bigint,
    tid              text,
    ksn_counter_max  bigint,
    hold_timeout     interval,
    merchant_id      bigint,
    merchant_active  boolean,
    network_id       bigint,
    fee_bp           integer,  -- the merchant's fee plan (pricing.FeePlan) ...
    fee_fixed_rial   bigint,
    fee_min_rial     bigint,
    fee_max_rial     bigint,
    shaparak_fee_exempt boolean  -- ... and Shaparak fee exemption
);

-- What a business step decided: the outcome and the transaction it concerns.
CREATE TYPE switch_result AS (result jsonb, txn_id bigint);

-- What `switch_handle` returns. `refused`: why the request is refused (nothing was written).
-- `stored`: the identity was seen before, and digest, ksn and result (or, for rows stored
-- before this migration, response) are what was stored.
CREATE TYPE switch_answer AS (
    refused   text,
    stored    boolean,
    result    jsonb,
    digest    bytea,
    ksn       bytea,
    response  bytea
);

-- A refusal: answered (63, 97 or 30) without anything written.
CREATE FUNCTION switch_refused(p_reason text) RETURNS switch_answer
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(p_reason, false, NULL, NULL, NULL, NULL)::switch_answer
$$;

CREATE FUNCTION switch_declined(p_outcome text) RETURNS switch_result
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(jsonb_build_object('outcome', p_outcome), NULL)::switch_result
$$;

-- The quote was not priced on what the database sees: price `p_basis` and call again.
CREATE FUNCTION switch_price_again(p_basis jsonb) RETURNS switch_result
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(jsonb_build_object('outcome', 'PRICE_AGAIN', 'basis', p_basis), NULL)::switch_result
$$;

-- What a purchase of `p_amount` at this terminal's merchant is priced on.
CREATE FUNCTION switch_purchase_basis(t switch_terminal, p_amount bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('amount', p_amount, 'fee_bp', t.fee_bp,
                              'fee_fixed_rial', t.fee_fixed_rial, 'fee_min_rial', t.fee_min_rial,
                              'fee_max_rial', t.fee_max_rial,
                              'shaparak_fee_exempt', t.shaparak_fee_exempt)
$$;

-- The key of a ledger account, exactly as ledger.AccountSpec.key spells it.
CREATE FUNCTION ledger_account_key(p_kind text, p_card bigint, p_merchant bigint,
                                   p_network bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_kind || ':' || concat_ws(':', 'c' || p_card, 'm' || p_merchant, 'n' || p_network)
$$;

-- The id of an existing account, or NULL: reading a balance never creates an account.
CREATE FUNCTION ledger_account_find(p_kind text, p_card bigint, p_merchant bigint,
                                    p_network bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT id FROM ledger_account WHERE key = ledger_account_key(p_kind, p_card, p_merchant, p_network)
$$;

-- The id of an account, created on first use, as ledger.account_id does (card accounts may
-- not go negative; points are in PTS).
CREATE FUNCTION ledger_account_ensure(p_kind text, p_card bigint, p_merchant bigint,
                                      p_network bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_key text := ledger_account_key(p_kind, p_card, p_merchant, p_network);
    v_id  bigint;
BEGIN
    SELECT id INTO v_id FROM ledger_account WHERE key = v_key;
    IF FOUND THEN
        RETURN v_id;
    END IF;
    INSERT INTO ledger_account (key, kind, unit, card_id, merchant_id, network_id,
                                debits_must_not_exceed_credits)
    VALUES (v_key, p_kind,
            CASE WHEN p_kind IN ('card_points', 'points_issued') THEN 'PTS' ELSE 'IRR' END,
            p_card, p_merchant, p_network,
            p_kind IN ('card_rial', 'card_credit', 'card_points'))
    ON CONFLICT (key) DO NOTHING RETURNING id INTO v_id;
    IF v_id IS NULL THEN  -- created concurrently by a transaction that has committed since
        SELECT id INTO v_id FROM ledger_account WHERE key = v_key;
    END IF;
    RETURN v_id;
END $$;

-- The summed running totals of card accounts (which keep them, migration 0006), as the
-- four-element array `result` carries; missing accounts count as zero.
CREATE FUNCTION switch_totals(p_accounts bigint[]) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_array(coalesce(sum(debits_pending), 0), coalesce(sum(debits_posted), 0),
                             coalesce(sum(credits_pending), 0), coalesce(sum(credits_posted), 0))
    FROM ledger_account WHERE id = ANY (p_accounts)
$$;

-- A card is valid through the last day of its expiry month (cardcheck.expiry_passed).
CREATE FUNCTION switch_expiry_passed(p_yymm text, p_now timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_yymm::integer < to_char(p_now AT TIME ZONE 'UTC', 'YYMM')::integer
$$;

-- The ledger's side of a request.

-- The store-credit accounts of a card usable at a merchant, in the order they are spent:
-- the merchant's own credit first, then its store network's. Each with its issuer's key
-- parts; `account` is NULL where the card holds no such credit yet.
CREATE FUNCTION switch_credit_sources(p_card bigint, t switch_terminal)
RETURNS TABLE (account bigint, merchant_id bigint, network_id bigint)
LANGUAGE sql STABLE AS $$
    SELECT ledger_account_find('card_credit', p_card, t.merchant_id, NULL), t.merchant_id, NULL::bigint
    UNION ALL
    SELECT ledger_account_find('card_credit', p_card, NULL, t.network_id), NULL, t.network_id
    WHERE t.network_id IS NOT NULL
$$;

-- A hold that cannot be refused (its debit account keeps no balance to check, or the
-- balance was checked under the same lock): any status but ok is a bug.
CREATE FUNCTION switch_hold(p_code text, p_ref text, p_debit bigint, p_credit bigint,
                            p_amount bigint, p_timeout_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    SELECT status INTO v_status
    FROM ledger_hold('IRR', p_code, p_ref, p_debit, p_credit, p_amount, p_timeout_at);
    IF v_status <> 'ok' THEN
        RAISE EXCEPTION 'switch: hold % for % refused: %', p_code, p_ref, v_status;
    END IF;
END $$;

-- Resolve every still-pending hold of a transaction, oldest first.
CREATE FUNCTION switch_resolve_holds(p_ref text, p_action text, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_hold   bigint;
    v_status text;
BEGIN
    FOR v_hold IN
        SELECT id FROM ledger_transfer
        WHERE ref = p_ref AND kind = 'pending' AND status = 'pending' ORDER BY id
    LOOP
        SELECT status INTO v_status FROM ledger_resolve(v_hold, p_action, NULL, p_now);
        IF v_status <> 'ok' THEN
            RAISE EXCEPTION 'switch: % of hold % (%) failed: %', p_action, v_hold, p_ref, v_status;
        END IF;
    END LOOP;
END $$;

-- Post the exact opposite of everything posted under `p_ref` (a reversal after confirm),
-- one balanced transfer per unit, all or none: 'ok', or 'exceeds_credits' when a card has
-- already spent what must come back (and then nothing is posted). The same as
-- ledger.mirror, in one call.
CREATE FUNCTION ledger_mirror(p_ref text, p_code text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    u        record;
    v_status text;
BEGIN
    FOR u IN
        SELECT unit, array_agg(account_id ORDER BY account_id) AS accounts,
               array_agg(amount ORDER BY account_id) AS amounts
        FROM (SELECT t.unit, e.account_id, (-sum(e.amount))::bigint AS amount
              FROM ledger_entry e JOIN ledger_transfer t ON t.id = e.transfer_id
              WHERE t.ref = p_ref AND t.kind IN ('single', 'post')
              GROUP BY t.unit, e.account_id HAVING sum(e.amount) <> 0) AS net
        GROUP BY unit ORDER BY unit
    LOOP
        SELECT status INTO v_status
        FROM ledger_transfer_create(u.unit, p_code, p_ref, u.accounts, u.amounts);
        IF v_status <> 'ok' THEN
            RAISE EXCEPTION 'mirror refused' USING ERRCODE = 'SW003', DETAIL = v_status;
        END IF;
    END LOOP;
    RETURN 'ok';
EXCEPTION WHEN SQLSTATE 'SW003' THEN  -- a savepoint, on this rare path only
    RETURN 'exceeds_credits';
END $$;

-- Card checks (the profile's order; see switch/cardcheck.py).

-- The active, unexpired club card of this terminal's network that `c` names.
CREATE FUNCTION switch_club_card(c switch_card, t switch_terminal, p_now timestamptz,
                                 OUT card_id bigint, OUT decline text)
LANGUAGE plpgsql AS $$
DECLARE
    v card%ROWTYPE;
BEGIN
    IF NOT c.luhn_ok THEN
        decline := 'INVALID_CARD_NUMBER';
        RETURN;
    END IF;
    SELECT * INTO v FROM card WHERE pan_hash = c.pan_hash;
    IF NOT FOUND THEN  -- an unknown number in a club BIN is 14; any other card is not ours
        decline := CASE WHEN EXISTS (SELECT 1 FROM store_network WHERE club_bin = c.pan_bin)
                        THEN 'INVALID_CARD_NUMBER' ELSE 'NOT_PERMITTED_TO_CARD' END;
    ELSIF v.status = 'blocked' THEN
        decline := 'RESTRICTED_CARD';
    ELSIF v.status = 'expired' OR switch_expiry_passed(v.expiry, p_now) THEN
        decline := 'EXPIRED_CARD';
    ELSIF c.expiry <> v.expiry THEN
        decline := 'INVALID_CARD_NUMBER';
    ELSIF t.network_id IS DISTINCT FROM v.network_id THEN
        decline := 'NOT_PERMITTED_TO_TERMINAL';
    ELSE
        card_id := v.id;
    END IF;
END $$;

-- A Shetab card: Luhn, not one of our club cards, not expired; and the active club card of
-- the member who linked it, if any (it earns the rewards).
CREATE FUNCTION switch_bank_card(c switch_card, p_now timestamptz,
                                 OUT rewards_card_id bigint, OUT decline text)
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT c.luhn_ok THEN
        decline := 'INVALID_CARD_NUMBER';
    ELSIF EXISTS (SELECT 1 FROM store_network WHERE club_bin = c.pan_bin) THEN
        decline := 'NOT_PERMITTED_TO_CARD';
    ELSIF switch_expiry_passed(c.expiry, p_now) THEN
        decline := 'EXPIRED_CARD';
    ELSE
        SELECT k.id INTO rewards_card_id FROM bank_card b JOIN card k ON k.member_id = b.member_id
        WHERE b.pan_hash = c.pan_hash AND k.status = 'active' ORDER BY k.id DESC LIMIT 1;
    END IF;
END $$;

-- Phase 1 (0100).

CREATE FUNCTION switch_new_rrn() RETURNS text LANGUAGE sql AS $$
    SELECT lpad(nextval('rrn_seq')::text, 12, '0')
$$;

-- A new PENDING transaction; the approval code is derived from the RRN (unique enough for
-- a receipt).
CREATE FUNCTION switch_new_txn(r switch_request, t switch_terminal, p switch_auth,
                               p_rrn text, p_card bigint, p_pan_hash bytea,
                               p_original bigint DEFAULT NULL) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO txn (terminal_id, stan, transmission_f7, transmitted_at, processing_code,
                     kind, amount_rial, rrn, approval_code, state, card_id, pan_hash,
                     merchant_id, hold_expires_at, quote, original_txn_id, created_at)
    VALUES (t.terminal_id, r.stan, r.transmission_f7, r.transmitted_at, p.processing_code,
            p.kind, p.amount, p_rrn, right(p_rrn, 6), 'PENDING', p_card, p_pan_hash,
            t.merchant_id,
            r.now + CASE WHEN p.kind = 'bank_purchase' THEN p.bank_window ELSE t.hold_timeout END,
            p.quote, p_original, r.now)
    RETURNING id
$$;

CREATE FUNCTION switch_approved(p_rrn text, p_kind text, p_txn bigint, p_extra jsonb)
RETURNS switch_result LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(jsonb_build_object('outcome', 'APPROVED', 'rrn', p_rrn, 'kind', p_kind) || p_extra,
               p_txn)::switch_result
$$;

-- Price a Shetab purchase before the terminal runs it at the bank: nothing to hold.
CREATE FUNCTION switch_bank_purchase(r switch_request, t switch_terminal, c switch_card,
                                     p switch_auth) RETURNS switch_result
LANGUAGE plpgsql AS $$
DECLARE
    b       record;
    v_basis jsonb;
    v_rrn   text;
BEGIN
    SELECT * INTO b FROM switch_bank_card(c, r.now);
    IF b.decline IS NOT NULL THEN
        RETURN switch_declined(b.decline);
    END IF;
    v_basis := switch_purchase_basis(t, p.amount);
    IF p.basis IS DISTINCT FROM v_basis THEN
        RETURN switch_price_again(v_basis);
    END IF;
    v_rrn := switch_new_rrn();
    RETURN switch_approved(v_rrn, p.kind,
        switch_new_txn(r, t, p, v_rrn, b.rewards_card_id, c.pan_hash),
        jsonb_build_object('quote', p.quote, 'rewards', b.rewards_card_id IS NOT NULL));
END $$;

-- Hold the payable amount on the card's rial account for the merchant.
CREATE FUNCTION switch_club_purchase(r switch_request, t switch_terminal, c switch_card,
                                     p switch_auth) RETURNS switch_result
LANGUAGE plpgsql AS $$
DECLARE
    k       record;
    v_rial   bigint;
    v_pay    bigint;
    v_enough boolean;
    v_basis  jsonb;
    v_rrn    text;
    v_txn    bigint;
BEGIN
    SELECT * INTO k FROM switch_club_card(c, t, r.now);
    IF k.decline IS NOT NULL THEN
        RETURN switch_declined(k.decline);
    END IF;
    v_basis := switch_purchase_basis(t, p.amount);
    IF p.basis IS DISTINCT FROM v_basis THEN
        RETURN switch_price_again(v_basis);
    END IF;
    v_pay := (p.quote->>'payable')::bigint;
    -- Checked under the account's lock, before anything is written: a decline leaves nothing.
    v_rial := ledger_account_find('card_rial', k.card_id, NULL, NULL);
    SELECT credits_posted - debits_posted - debits_pending >= v_pay INTO v_enough
    FROM ledger_account WHERE id = v_rial FOR UPDATE;
    IF v_enough IS NOT TRUE THEN  -- no rial account at all is no funds either
        RETURN switch_declined('INSUFFICIENT_FUNDS');
    END IF;
    v_rrn := switch_new_rrn();
    IF v_pay > 0 THEN
        PERFORM switch_hold('club_purchase', v_rrn, v_rial,
                            ledger_account_ensure('merchant_payable', NULL, t.merchant_id, NULL),
                            v_pay, r.now + t.hold_timeout);
    END IF;
    v_txn := switch_new_txn(r, t, p, v_rrn, k.card_id, c.pan_hash);
    RETURN switch_approved(v_rrn, p.kind, v_txn, jsonb_build_object(
        'quote', p.quote, 'balances', jsonb_build_object('rial', switch_totals(ARRAY[v_rial]))));
END $$;

-- Spend store credit, the merchant's own first; with PA=1, approve what the credit covers.
CREATE FUNCTION switch_credit_purchase(r switch_request, t switch_terminal, c switch_card,
                                       p switch_auth) RETURNS switch_result
LANGUAGE plpgsql AS $$
DECLARE
    k           record;
    s           record;
    v_accounts  bigint[];
    v_available bigint;
    v_approved  bigint;
    v_remaining bigint;
    v_take      bigint;
    v_basis     jsonb;
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
    v_basis := switch_purchase_basis(t, v_approved);
    IF p.basis IS DISTINCT FROM v_basis THEN
        RETURN switch_price_again(v_basis);
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
    v_result := jsonb_build_object('quote', p.quote, 'balances',
                                   jsonb_build_object('credit', switch_totals(v_accounts)));
    IF v_approved < p.amount THEN
        RETURN ROW(jsonb_build_object('outcome', 'PARTIAL_APPROVAL', 'rrn', v_rrn,
                                      'kind', p.kind, 'approved', v_approved) || v_result,
                   v_txn)::switch_result;
    END IF;
    RETURN switch_approved(v_rrn, p.kind, v_txn, v_result);
END $$;

-- The customer pays the merchant; the card is credited on confirm (the merchant then owes
-- the network what it collected).
CREATE FUNCTION switch_topup(r switch_request, t switch_terminal, c switch_card,
                             p switch_auth) RETURNS switch_result
LANGUAGE plpgsql AS $$
DECLARE
    k      record;
    v_rial bigint;
    v_rrn  text;
    v_txn  bigint;
BEGIN
    SELECT * INTO k FROM switch_club_card(c, t, r.now);
    IF k.decline IS NOT NULL THEN
        RETURN switch_declined(k.decline);
    END IF;
    v_rrn := switch_new_rrn();
    v_rial := ledger_account_ensure('card_rial', k.card_id, NULL, NULL);
    PERFORM switch_hold('topup', v_rrn,
                        ledger_account_ensure('merchant_payable', NULL, t.merchant_id, NULL),
                        v_rial, p.amount, r.now + t.hold_timeout);
    v_txn := switch_new_txn(r, t, p, v_rrn, k.card_id, c.pan_hash);
    RETURN switch_approved(v_rrn, p.kind, v_txn, jsonb_build_object(
        'balances', jsonb_build_object('rial', switch_totals(ARRAY[v_rial]))));
END $$;

CREATE FUNCTION switch_balance_inquiry(r switch_request, t switch_terminal, c switch_card)
RETURNS switch_result LANGUAGE plpgsql AS $$
DECLARE
    k record;
BEGIN
    SELECT * INTO k FROM switch_club_card(c, t, r.now);
    IF k.decline IS NOT NULL THEN
        RETURN switch_declined(k.decline);
    END IF;
    RETURN ROW(jsonb_build_object('outcome', 'APPROVED', 'balances', jsonb_build_object(
        'rial', switch_totals(ARRAY[ledger_account_find('card_rial', k.card_id, NULL, NULL)]),
        'credit', switch_totals(ARRAY(SELECT account FROM switch_credit_sources(k.card_id, t))),
        'points', switch_totals(
            ARRAY[ledger_account_find('card_points', k.card_id, NULL, NULL)]))),
        NULL)::switch_result;
END $$;

-- Give back (part of) a confirmed purchase made with the same card at this merchant. The
-- amount is reserved against the original now and given back on confirm.
CREATE FUNCTION switch_refund(r switch_request, t switch_terminal, c switch_card,
                              p switch_auth) RETURNS switch_result
LANGUAGE plpgsql AS $$
DECLARE
    o         txn%ROWTYPE;
    k         record;
    b         record;
    h         record;
    v_hash    bytea;
    v_card    bigint;
    v_basis   jsonb;
    v_rrn     text;
    v_start   bigint;
    v_end     bigint;
    v_offset  bigint := 0;
    v_share   bigint;
BEGIN
    IF p.original_rrn IS NULL THEN
        RETURN switch_declined('INVALID_TRANSACTION');  -- a refund without field 48 tag OR
    END IF;
    SELECT * INTO o FROM txn WHERE rrn = p.original_rrn FOR UPDATE;
    IF NOT FOUND OR o.merchant_id <> t.merchant_id THEN
        RETURN switch_declined('ORIGINAL_NOT_FOUND');
    END IF;
    IF o.kind <> p.refund_of OR o.state <> 'CONFIRMED' THEN
        RETURN switch_declined('INVALID_TRANSACTION');
    END IF;
    IF p.amount > (o.quote->>'payable')::bigint - o.refunded_rial THEN
        RETURN switch_declined('INVALID_AMOUNT');  -- more than what is left to refund
    END IF;
    IF o.kind = 'bank_purchase' THEN
        SELECT * INTO b FROM switch_bank_card(c, r.now);
        IF b.decline IS NOT NULL THEN
            RETURN switch_declined(b.decline);
        END IF;
        v_card := o.card_id;
    ELSE
        SELECT * INTO k FROM switch_club_card(c, t, r.now);
        IF k.decline IS NOT NULL THEN
            RETURN switch_declined(k.decline);
        END IF;
        v_card := k.card_id;
    END IF;
    v_hash := c.pan_hash;
    IF v_hash IS DISTINCT FROM o.pan_hash THEN
        RETURN switch_declined('INVALID_TRANSACTION');  -- not the card of the original
    END IF;
    -- The network gives back its fee in proportion (pricing.refund_share).
    v_basis := jsonb_build_object(
        'amount', p.amount, 'original_fee', (o.quote->>'network_fee')::bigint,
        'original_payable', (o.quote->>'payable')::bigint, 'refunded', o.refunded_rial);
    IF p.basis IS DISTINCT FROM v_basis THEN
        RETURN switch_price_again(v_basis);
    END IF;
    v_rrn := switch_new_rrn();
    IF o.kind = 'club_purchase' THEN
        PERFORM switch_hold('refund', v_rrn,
                            ledger_account_ensure('merchant_payable', NULL, o.merchant_id, NULL),
                            ledger_account_ensure('card_rial', o.card_id, NULL, NULL),
                            p.amount, r.now + t.hold_timeout);
    ELSIF o.kind = 'credit_purchase' THEN
        -- Store credit goes back to the issuers it came from, filling the original's
        -- spending order: the range [refunded, refunded + amount) of the original is split
        -- where each issuer's part ends, so the parts sum to the amount.
        v_start := o.refunded_rial;
        v_end := o.refunded_rial + p.amount;
        FOR h IN
            SELECT e.account_id, x.amount, a.merchant_id, a.network_id
            FROM ledger_transfer hp
            JOIN ledger_transfer x ON x.pending_id = hp.id AND x.kind = 'post'
            JOIN ledger_entry e ON e.transfer_id = hp.id AND e.amount > 0
            JOIN ledger_account a ON a.id = e.account_id
            WHERE hp.ref = o.rrn AND hp.kind = 'pending' ORDER BY hp.id
        LOOP
            v_share := greatest(0, least(v_end, v_offset + h.amount) - greatest(v_start, v_offset));
            IF v_share > 0 THEN
                PERFORM switch_hold('refund', v_rrn,
                                    ledger_account_ensure('credit_issued', NULL, h.merchant_id,
                                                          h.network_id),
                                    h.account_id, v_share, r.now + t.hold_timeout);
            END IF;
            v_offset := v_offset + h.amount;
        END LOOP;
    END IF;  -- a bank purchase's money goes back at the bank; only fees move on confirm
    UPDATE txn SET refunded_rial = refunded_rial + p.amount WHERE id = o.id;
    RETURN switch_approved(v_rrn, p.kind,
                           switch_new_txn(r, t, p, v_rrn, v_card, v_hash, o.id), '{}');
END $$;

CREATE FUNCTION switch_authorize(r switch_request, t switch_terminal, c switch_card,
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
        WHEN 'refund' THEN RETURN switch_refund(r, t, c, p);
    END CASE;
END $$;

-- Phase 2 (0220, 0400) and expiry.

-- Commit what phase 1 reserved, and charge (or, for a refund, give back) the network's fee.
-- Fees go to the merchant's network; a standalone merchant's to network 1, the operator.
CREATE FUNCTION switch_post_txn(x txn, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_fee     bigint := (x.quote->>'network_fee')::bigint;
    v_sign    bigint := CASE WHEN x.kind = 'refund' THEN -1 ELSE 1 END;
    v_network bigint;
    v_status  text;
BEGIN
    PERFORM switch_resolve_holds(x.rrn, 'post', p_now);
    IF v_fee = 0 OR x.kind = 'topup' THEN
        RETURN;
    END IF;
    SELECT coalesce(m.network_id, (SELECT min(id) FROM store_network)) INTO v_network
    FROM merchant m WHERE m.id = x.merchant_id;
    SELECT status INTO v_status FROM ledger_transfer_create(
        'IRR', x.kind || '_fee', x.rrn,
        ARRAY[ledger_account_ensure('merchant_payable', NULL, x.merchant_id, NULL),
              ledger_account_ensure('fee_income', NULL, NULL, v_network)],
        ARRAY[v_sign * v_fee, -v_sign * v_fee]);
    IF v_status <> 'ok' THEN
        RAISE EXCEPTION 'switch: fee of % refused: %', x.rrn, v_status;
    END IF;
END $$;

-- A refund that does not go through gives its reservation on the original back.
CREATE FUNCTION switch_release_refund(x txn) RETURNS void LANGUAGE sql AS $$
    UPDATE txn SET refunded_rial = refunded_rial - x.amount_rial
    WHERE id = x.original_txn_id AND x.kind = 'refund'
$$;

-- The hold timed out: release it (and a refund's reservation); VOIDED for good. The caller
-- holds the transaction's row lock.
CREATE FUNCTION switch_expire_txn(x txn, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM switch_resolve_holds(x.rrn, 'expire', p_now);
    PERFORM switch_release_refund(x);
    UPDATE txn SET state = 'VOIDED', voided_at = p_now, void_reason = 'expired' WHERE id = x.id;
END $$;

-- The card balance a 0230 shows: none for a bank purchase or without a card, the store
-- credit usable here for store-credit purchases and their refunds, else the rial account.
CREATE FUNCTION switch_txn_balances(x txn, t switch_terminal) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN x.card_id IS NULL OR x.kind = 'bank_purchase' THEN '{}'::jsonb
        WHEN x.kind = 'credit_purchase' OR (x.kind = 'refund' AND x.processing_code = '209200')
        THEN jsonb_build_object('credit', switch_totals(
            ARRAY(SELECT account FROM switch_credit_sources(x.card_id, t))))
        ELSE jsonb_build_object('rial', switch_totals(
            ARRAY[ledger_account_find('card_rial', x.card_id, NULL, NULL)]))
    END
$$;

CREATE FUNCTION switch_confirm(r switch_request, t switch_terminal, a switch_advice)
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
    END IF;
    -- A repeated confirm of a CONFIRMED transaction answers 00 again with the same amounts.
    RETURN switch_approved(x.rrn, x.kind, x.id, jsonb_build_object(
        'quote', x.quote, 'rewards', x.card_id IS NOT NULL,
        'balances', switch_txn_balances(x, t)));
END $$;

CREATE FUNCTION switch_reverse(r switch_request, t switch_terminal, a switch_advice)
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
    ELSIF x.state = 'CONFIRMED' THEN
        -- After confirm, by exact compensating entries, while not settled nor refunded.
        IF x.settlement_window_id IS NOT NULL OR x.refunded_rial > 0 THEN
            RETURN switch_declined('INVALID_TRANSACTION');  -- the merchant refunds instead
        END IF;
        IF ledger_mirror(x.rrn, 'reversal') = 'exceeds_credits' THEN
            RETURN switch_declined('INSUFFICIENT_FUNDS');  -- the card spent what it got
        END IF;
    END IF;
    IF x.state <> 'VOIDED' THEN
        PERFORM switch_release_refund(x);
        UPDATE txn SET state = 'VOIDED', voided_at = r.now, void_reason = 'reversal'
        WHERE id = x.id;
    END IF;
    RETURN ROW(jsonb_build_object('outcome', 'APPROVED', 'rrn', x.rrn), x.id)::switch_result;
END $$;

-- Void up to `p_limit` expired PENDING transactions; returns how many. Rows being handled
-- elsewhere are skipped, so several switch processes may sweep at once; a confirm racing
-- the sweeper waits for the row lock and then sees VOIDED (68).
CREATE FUNCTION switch_sweep(p_now timestamptz, p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    x       txn%ROWTYPE;
    v_count integer := 0;
BEGIN
    FOR x IN
        SELECT * FROM txn WHERE state = 'PENDING' AND hold_expires_at <= p_now
        ORDER BY hold_expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM switch_expire_txn(x, p_now);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END $$;

-- The device, locked for this request; NULL if it is unknown, inactive or its BDK retired.
CREATE FUNCTION switch_lock_terminal(r switch_request) RETURNS switch_terminal
LANGUAGE plpgsql AS $$
DECLARE
    v switch_terminal;
BEGIN
    SELECT t.id, t.tid, t.ksn_counter_max,
           make_interval(secs => coalesce(t.hold_timeout_s, r.hold_timeout_s)),
           m.id, m.status = 'active', m.network_id, m.fee_bp, m.fee_fixed_rial,
           m.fee_min_rial, m.fee_max_rial, m.shaparak_fee_exempt
    INTO v
    FROM terminal t JOIN merchant m ON m.id = t.merchant_id JOIN bdk b ON b.id = t.bdk_id
    WHERE t.bdk_id = r.bdk_id AND t.derivation_id = r.derivation_id
      AND t.status = 'active' AND b.status = 'active'
    FOR NO KEY UPDATE OF t;
    RETURN CASE WHEN FOUND THEN v END;
END $$;

-- Why a new request is refused at steps 4 to 6 of the profile's check order (KSN counter,
-- field 62, TID), or NULL.
CREATE FUNCTION switch_refusal(r switch_request, t switch_terminal, c switch_card)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN r.ksn_counter <= t.ksn_counter_max THEN 'replay'
        WHEN c.error IS NOT NULL THEN c.error
        WHEN c.tid <> t.tid THEN 'tid_mismatch'  -- (no TID without field 62)
    END
$$;

-- One request, start to end (see the top of this file). `c` is NULL without field 62, `p`
-- is given for a 0100 only, `a` for a 0220 or 0400 only.
CREATE FUNCTION switch_handle(r switch_request, c switch_card, p switch_auth, a switch_advice)
RETURNS switch_answer LANGUAGE plpgsql AS $$
DECLARE
    t         switch_terminal;
    s         switch_answer;
    o         switch_result;
    v_refusal text;
BEGIN
    t := switch_lock_terminal(r);
    IF t.terminal_id IS NULL THEN
        RETURN switch_refused('unknown_device');
    END IF;
    IF r.transmitted_at IS NULL THEN
        RETURN switch_refused('format_error');  -- field 7 names no real date
    END IF;
    SELECT NULL, true, l.result, l.digest, l.ksn, l.response INTO s FROM request_log l
    WHERE l.terminal_id = t.terminal_id AND l.stan = r.stan
      AND l.transmitted_at = r.transmitted_at;
    IF FOUND THEN
        RETURN s;
    END IF;
    IF NOT r.fresh THEN
        RETURN switch_refused('time_window');
    END IF;
    IF r.mti = '0100' AND EXISTS (
            SELECT 1 FROM reversal_memo WHERE terminal_id = t.terminal_id AND stan = r.stan
            AND transmitted_at = r.transmitted_at) THEN
        -- The original of an earlier reversal, arriving late: its counter is below the
        -- reversal's, so it is recognised before the counter check.
        o := switch_declined('INVALID_TRANSACTION');
    ELSE
        v_refusal := coalesce(
            switch_refusal(r, t, c),
            CASE WHEN r.mti IN ('0220', '0400') AND a.original_transmitted_at IS NULL
                 THEN 'format_error' END);  -- field 90 names no real date
        IF v_refusal IS NOT NULL THEN
            RETURN switch_refused(v_refusal);
        END IF;
        o := CASE r.mti
            WHEN '0100' THEN switch_authorize(r, t, c, p)
            WHEN '0220' THEN switch_confirm(r, t, a)
            WHEN '0400' THEN switch_reverse(r, t, a)
            ELSE ROW(jsonb_build_object('outcome', 'APPROVED'), NULL)::switch_result  -- 0800
        END;
        IF o.result->>'outcome' = 'PRICE_AGAIN' THEN
            RETURN ROW(NULL, false, o.result, NULL, NULL, NULL)::switch_answer;
        END IF;
        UPDATE terminal SET ksn_counter_max = r.ksn_counter WHERE id = t.terminal_id;
    END IF;
    INSERT INTO request_log (terminal_id, stan, transmitted_at, mti, digest, ksn,
                             response_code, result, txn_id)
    VALUES (t.terminal_id, r.stan, r.transmitted_at, r.mti, r.digest, r.ksn,
            (SELECT response_code FROM request_outcome WHERE name = o.result->>'outcome'),
            o.result, o.txn_id);
    RETURN ROW(NULL, false, o.result, NULL, NULL, NULL)::switch_answer;
END $$;
