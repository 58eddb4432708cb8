-- The double-entry ledger.
--
-- Theory of operation (after TigerBeetle's model, in SQL):
-- * An account keeps four running totals: debits/credits, each posted and pending. Its
--   ledger balance uses the posted totals; its available balance also subtracts pending
--   debits. Accounts flagged `debits_must_not_exceed_credits` (what the network owes a
--   cardholder) may never go below zero, including pending debits: a CHECK constraint
--   enforces it for every writer, and the functions below test it first so that an
--   expected decline is a status, not an exception.
-- * A transfer is a set of entries (signed amounts: debit > 0, credit < 0) that sums to zero;
--   all its accounts share one unit (IRR rials or PTS points).
-- * A pending transfer (a hold) has one debit and one credit entry and moves amounts into the
--   pending totals. Exactly one of post (all or part), void or expire may follow it, once:
--   `pending_id` is UNIQUE, and the pending row is locked while it is resolved.
-- * Entries and transfers are append-only; triggers refuse UPDATE and DELETE, except that a
--   pending transfer's `status` moves once from 'pending' to its final state.
-- * Every function takes and returns plain values and does its work in one round trip, so
--   a caller can put many operations from many requests into one database transaction.
--   Accounts are locked in id order, so two transfers never deadlock on each other.

CREATE TABLE ledger_account (
    id              bigserial PRIMARY KEY,
    key             text NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN (
                        'card_rial', 'card_credit', 'card_points', 'merchant_payable',
                        'credit_issued', 'points_issued', 'fee_income', 'settlement_bank',
                        'discount_funding')),
    unit            text NOT NULL CHECK (unit IN ('IRR', 'PTS')),
    card_id         bigint REFERENCES card (id),
    merchant_id     bigint REFERENCES merchant (id),
    network_id      bigint REFERENCES store_network (id),
    sponsor         text,
    debits_must_not_exceed_credits boolean NOT NULL,
    debits_pending  bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted   bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending bigint NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted  bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_account_no_overdraft CHECK (
        NOT debits_must_not_exceed_credits OR debits_posted + debits_pending <= credits_posted)
);
CREATE INDEX ledger_account_card_idx ON ledger_account (card_id) WHERE card_id IS NOT NULL;
CREATE INDEX ledger_account_merchant_idx ON ledger_account (merchant_id)
    WHERE merchant_id IS NOT NULL;

CREATE TABLE ledger_transfer (
    id          bigserial PRIMARY KEY,
    unit        text NOT NULL CHECK (unit IN ('IRR', 'PTS')),
    kind        text NOT NULL CHECK (kind IN ('single', 'pending', 'post', 'void', 'expire')),
    code        text NOT NULL CHECK (length(code) BETWEEN 1 AND 64),  -- business meaning
    ref         text,                                                  -- e.g. an RRN
    amount      bigint NOT NULL CHECK (amount >= 0),
    pending_id  bigint UNIQUE REFERENCES ledger_transfer (id),
    timeout_at  timestamptz,
    status      text CHECK (status IN ('pending', 'posted', 'voided', 'expired')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind IN ('post', 'void', 'expire')) = (pending_id IS NOT NULL)),
    CHECK ((kind = 'pending') = (status IS NOT NULL)),
    CHECK ((kind = 'pending') = (timeout_at IS NOT NULL))
);
CREATE INDEX ledger_transfer_timeout_idx ON ledger_transfer (timeout_at)
    WHERE status = 'pending';
CREATE INDEX ledger_transfer_ref_idx ON ledger_transfer (ref) WHERE ref IS NOT NULL;

CREATE TABLE ledger_entry (
    id          bigserial PRIMARY KEY,
    transfer_id bigint NOT NULL REFERENCES ledger_transfer (id),
    account_id  bigint NOT NULL REFERENCES ledger_account (id),
    amount      bigint NOT NULL CHECK (amount <> 0)  -- debit > 0, credit < 0
);
CREATE INDEX ledger_entry_transfer_idx ON ledger_entry (transfer_id);
CREATE INDEX ledger_entry_account_idx ON ledger_entry (account_id);

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'ledger_transfer'
       AND OLD.status = 'pending' AND NEW.status IN ('posted', 'voided', 'expired')
       AND (to_jsonb(OLD) - 'status') = (to_jsonb(NEW) - 'status') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'raise_exception';
END $$;
CREATE TRIGGER ledger_transfer_append_only BEFORE UPDATE OR DELETE ON ledger_transfer
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_entry_append_only BEFORE UPDATE OR DELETE ON ledger_entry
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- Lock the accounts of one transfer in id order; returns how many of them exist with `unit`.
CREATE FUNCTION ledger_lock_accounts(p_ids bigint[], p_unit text) RETURNS integer
LANGUAGE sql AS $$
    SELECT count(*)::integer FROM (
        SELECT id FROM ledger_account
        WHERE id = ANY (p_ids) AND unit = p_unit ORDER BY id FOR UPDATE) AS locked
$$;

-- An immediate, balanced, multi-entry transfer. Status 'ok' or 'exceeds_credits'.
-- Malformed input (unbalanced, unknown account, wrong unit) is a programmer error: it raises.
CREATE FUNCTION ledger_transfer_create(
    p_unit text, p_code text, p_ref text, p_accounts bigint[], p_amounts bigint[],
    OUT status text, OUT transfer_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_accounts bigint[];
    v_short    integer;
BEGIN
    IF cardinality(p_accounts) < 2 OR cardinality(p_accounts) <> cardinality(p_amounts)
       OR (SELECT sum(a) FROM unnest(p_amounts) AS a) <> 0
       OR EXISTS (SELECT 1 FROM unnest(p_amounts) AS a WHERE a = 0) THEN
        RAISE EXCEPTION 'ledger: transfer must have >= 2 non-zero entries summing to zero';
    END IF;
    v_accounts := ARRAY(SELECT DISTINCT x FROM unnest(p_accounts) AS x);
    IF ledger_lock_accounts(v_accounts, p_unit) <> cardinality(v_accounts) THEN
        RAISE EXCEPTION 'ledger: unknown account or unit mismatch in %', p_accounts;
    END IF;
    -- Net debit per constrained account must fit what it holds (pending debits included).
    SELECT count(*) INTO v_short
    FROM (SELECT e.account, sum(e.amount) AS net
          FROM unnest(p_accounts, p_amounts) AS e (account, amount) GROUP BY e.account) AS d
    JOIN ledger_account a ON a.id = d.account
    WHERE a.debits_must_not_exceed_credits AND d.net > 0
      AND a.debits_posted + a.debits_pending + d.net > a.credits_posted;
    IF v_short > 0 THEN
        status := 'exceeds_credits';
        RETURN;
    END IF;
    INSERT INTO ledger_transfer (unit, kind, code, ref, amount)
    VALUES (p_unit, 'single', p_code, p_ref,
            (SELECT sum(a) FROM unnest(p_amounts) AS a WHERE a > 0))
    RETURNING id INTO transfer_id;
    INSERT INTO ledger_entry (transfer_id, account_id, amount)
    SELECT transfer_id, e.account, e.amount FROM unnest(p_accounts, p_amounts) AS e (account, amount);
    UPDATE ledger_account a
    SET debits_posted = a.debits_posted + d.debits, credits_posted = a.credits_posted + d.credits
    FROM (SELECT e.account,
                 coalesce(sum(e.amount) FILTER (WHERE e.amount > 0), 0) AS debits,
                 coalesce(-sum(e.amount) FILTER (WHERE e.amount < 0), 0) AS credits
          FROM unnest(p_accounts, p_amounts) AS e (account, amount) GROUP BY e.account) AS d
    WHERE a.id = d.account;
    status := 'ok';
END $$;

-- A hold: a pending transfer of `p_amount` from `p_debit` to `p_credit`, expiring at
-- `p_timeout_at`. Status 'ok' or 'exceeds_credits'.
CREATE FUNCTION ledger_hold(
    p_unit text, p_code text, p_ref text, p_debit bigint, p_credit bigint, p_amount bigint,
    p_timeout_at timestamptz, OUT status text, OUT transfer_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_ok boolean;
BEGIN
    IF p_amount <= 0 OR p_debit = p_credit OR p_timeout_at IS NULL THEN
        RAISE EXCEPTION 'ledger: hold needs a positive amount, two accounts and a timeout';
    END IF;
    IF ledger_lock_accounts(ARRAY[p_debit, p_credit], p_unit) <> 2 THEN
        RAISE EXCEPTION 'ledger: unknown account or unit mismatch';
    END IF;
    SELECT NOT debits_must_not_exceed_credits
           OR debits_posted + debits_pending + p_amount <= credits_posted
    INTO v_ok FROM ledger_account WHERE id = p_debit;
    IF NOT v_ok THEN
        status := 'exceeds_credits';
        RETURN;
    END IF;
    INSERT INTO ledger_transfer (unit, kind, code, ref, amount, timeout_at, status)
    VALUES (p_unit, 'pending', p_code, p_ref, p_amount, p_timeout_at, 'pending')
    RETURNING id INTO transfer_id;
    INSERT INTO ledger_entry (transfer_id, account_id, amount)
    VALUES (transfer_id, p_debit, p_amount), (transfer_id, p_credit, -p_amount);
    UPDATE ledger_account SET debits_pending = debits_pending + p_amount WHERE id = p_debit;
    UPDATE ledger_account SET credits_pending = credits_pending + p_amount WHERE id = p_credit;
    status := 'ok';
END $$;

-- Resolve a hold: p_action is 'post' (p_amount NULL = all of it), 'void' or 'expire'.
-- Status: 'ok', 'not_found', 'already_posted', 'already_voided', 'already_expired',
-- 'expired' (a post after the timeout: the hold is expired instead, and that is committed),
-- 'not_expired' (an expire before the timeout), 'exceeds_pending'.
CREATE FUNCTION ledger_resolve(
    p_pending_id bigint, p_action text, p_amount bigint, p_now timestamptz,
    OUT status text, OUT transfer_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    p      ledger_transfer%ROWTYPE;
    v_deb  bigint;
    v_cred bigint;
    v_post bigint;
BEGIN
    SELECT * INTO p FROM ledger_transfer WHERE id = p_pending_id AND kind = 'pending' FOR UPDATE;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    IF p.status <> 'pending' THEN
        status := 'already_' || p.status;
        RETURN;
    END IF;
    IF p_action = 'post' AND p_now >= p.timeout_at THEN
        p_action := 'expire';
        status := 'expired';
    ELSIF p_action = 'expire' AND p_now < p.timeout_at THEN
        status := 'not_expired';
        RETURN;
    END IF;
    v_post := CASE WHEN p_action = 'post' THEN coalesce(p_amount, p.amount) ELSE 0 END;
    IF v_post < 0 OR v_post > p.amount OR (p_action = 'post' AND v_post = 0) THEN
        status := 'exceeds_pending';
        RETURN;
    END IF;
    SELECT account_id INTO v_deb FROM ledger_entry WHERE transfer_id = p.id AND amount > 0;
    SELECT account_id INTO v_cred FROM ledger_entry WHERE transfer_id = p.id AND amount < 0;
    PERFORM ledger_lock_accounts(ARRAY[v_deb, v_cred], p.unit);
    INSERT INTO ledger_transfer (unit, kind, code, ref, amount, pending_id)
    VALUES (p.unit, p_action, p.code, p.ref, CASE WHEN p_action = 'post' THEN v_post ELSE p.amount END, p.id)
    RETURNING id INTO transfer_id;
    IF v_post > 0 THEN
        INSERT INTO ledger_entry (transfer_id, account_id, amount)
        VALUES (transfer_id, v_deb, v_post), (transfer_id, v_cred, -v_post);
    END IF;
    UPDATE ledger_account SET debits_pending = debits_pending - p.amount,
                              debits_posted = debits_posted + v_post WHERE id = v_deb;
    UPDATE ledger_account SET credits_pending = credits_pending - p.amount,
                              credits_posted = credits_posted + v_post WHERE id = v_cred;
    UPDATE ledger_transfer SET status = CASE p_action WHEN 'post' THEN 'posted'
                                                      WHEN 'void' THEN 'voided'
                                                      ELSE 'expired' END
    WHERE id = p.id;
    status := coalesce(status, 'ok');
END $$;

-- Expire up to p_limit holds whose timeout has passed. Rows another process is resolving
-- are skipped, so several sweepers may run at once. Returns the expired pending ids.
CREATE FUNCTION ledger_expire_due(p_now timestamptz, p_limit integer)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
    r    record;
BEGIN
    FOR v_id IN
        SELECT id FROM ledger_transfer
        WHERE status = 'pending' AND timeout_at <= p_now
        ORDER BY timeout_at, id LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        SELECT * INTO r FROM ledger_resolve(v_id, 'expire', NULL, p_now);
        IF r.status = 'ok' THEN
            RETURN NEXT v_id;
        END IF;
    END LOOP;
END $$;
