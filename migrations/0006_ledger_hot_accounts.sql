-- Hot accounts keep no running totals.
--
-- Before: every transfer locked and updated a row for each of its accounts, so every
-- confirm in the network queued on the one fee-income row and every purchase at a merchant
-- on that merchant's payable row, each lock held until its commit.
-- Now: only accounts that must not go negative (a cardholder's rials, credit and points)
-- keep running totals, under a row lock, because a debit must be checked against them.
-- Every other account (merchant payables, fee income, issuers, the settlement account)
-- never refuses a debit, so nothing needs its balance in the write path: its balance is
-- the sum of its entries (`ledger_account_balance`), and writing to it only inserts
-- entries, which lock nothing. A CHECK keeps their totals at zero.
-- Also: the append-only trigger of ledger_entry no longer reads a column entries do not
-- have, and `ledger_expire_due` locks the accounts of a batch in id order before resolving
-- it, so concurrent sweepers cannot deadlock.

UPDATE ledger_account
SET debits_pending = 0, debits_posted = 0, credits_pending = 0, credits_posted = 0
WHERE NOT debits_must_not_exceed_credits;

ALTER TABLE ledger_account ADD CONSTRAINT ledger_account_derived_keeps_no_totals CHECK (
    debits_must_not_exceed_credits
    OR (debits_pending = 0 AND debits_posted = 0 AND credits_pending = 0 AND credits_posted = 0));

CREATE FUNCTION ledger_entry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger is append-only: % on ledger_entry refused', TG_OP
        USING ERRCODE = 'raise_exception';
END $$;
DROP TRIGGER ledger_entry_append_only ON ledger_entry;
CREATE TRIGGER ledger_entry_append_only BEFORE UPDATE OR DELETE ON ledger_entry
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_append_only();

-- Lock the accounts of one transfer that keep totals, in id order; check that all of
-- them exist with `p_unit`. Returns how many exist.
CREATE OR REPLACE FUNCTION ledger_lock_accounts(p_ids bigint[], p_unit text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_found integer;
BEGIN
    PERFORM 1 FROM ledger_account
    WHERE id = ANY (p_ids) AND unit = p_unit AND debits_must_not_exceed_credits
    ORDER BY id FOR UPDATE;
    SELECT count(*) INTO v_found FROM ledger_account WHERE id = ANY (p_ids) AND unit = p_unit;
    RETURN v_found;
END $$;

-- Running totals move only on accounts that keep them.
CREATE OR REPLACE FUNCTION ledger_transfer_create(
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
    WHERE a.id = d.account AND a.debits_must_not_exceed_credits;
    status := 'ok';
END $$;

CREATE OR REPLACE FUNCTION ledger_hold(
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
    UPDATE ledger_account SET debits_pending = debits_pending + p_amount
    WHERE id = p_debit AND debits_must_not_exceed_credits;
    UPDATE ledger_account SET credits_pending = credits_pending + p_amount
    WHERE id = p_credit AND debits_must_not_exceed_credits;
    status := 'ok';
END $$;

CREATE OR REPLACE FUNCTION ledger_resolve(
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
    SELECT e.account_id INTO v_deb FROM ledger_entry e WHERE e.transfer_id = p.id AND e.amount > 0;
    SELECT e.account_id INTO v_cred FROM ledger_entry e WHERE e.transfer_id = p.id AND e.amount < 0;
    PERFORM ledger_lock_accounts(ARRAY[v_deb, v_cred], p.unit);
    INSERT INTO ledger_transfer (unit, kind, code, ref, amount, pending_id)
    VALUES (p.unit, p_action, p.code, p.ref,
            CASE WHEN p_action = 'post' THEN v_post ELSE p.amount END, p.id)
    RETURNING id INTO transfer_id;
    IF v_post > 0 THEN
        INSERT INTO ledger_entry (transfer_id, account_id, amount)
        VALUES (transfer_id, v_deb, v_post), (transfer_id, v_cred, -v_post);
    END IF;
    UPDATE ledger_account SET debits_pending = debits_pending - p.amount,
                              debits_posted = debits_posted + v_post
    WHERE id = v_deb AND debits_must_not_exceed_credits;
    UPDATE ledger_account SET credits_pending = credits_pending - p.amount,
                              credits_posted = credits_posted + v_post
    WHERE id = v_cred AND debits_must_not_exceed_credits;
    UPDATE ledger_transfer SET status = CASE p_action WHEN 'post' THEN 'posted'
                                                      WHEN 'void' THEN 'voided'
                                                      ELSE 'expired' END
    WHERE id = p.id;
    status := coalesce(status, 'ok');
END $$;

CREATE OR REPLACE FUNCTION ledger_expire_due(p_now timestamptz, p_limit integer)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
    v_id  bigint;
    r     record;
BEGIN
    v_ids := ARRAY(
        SELECT id FROM ledger_transfer
        WHERE status = 'pending' AND timeout_at <= p_now
        ORDER BY timeout_at, id LIMIT p_limit FOR UPDATE SKIP LOCKED);
    -- All the batch's accounts that keep totals, in id order, before any is resolved.
    PERFORM 1 FROM ledger_account
    WHERE debits_must_not_exceed_credits AND id IN (
        SELECT e.account_id FROM ledger_entry e WHERE e.transfer_id = ANY (v_ids))
    ORDER BY id FOR UPDATE;
    FOREACH v_id IN ARRAY v_ids LOOP
        SELECT * INTO r FROM ledger_resolve(v_id, 'expire', NULL, p_now);
        IF r.status = 'ok' THEN
            RETURN NEXT v_id;
        END IF;
    END LOOP;
END $$;

-- The balance of any account: its running totals if it keeps them, else the sums of its
-- entries (posted: single and post transfers; pending: holds still pending).
CREATE FUNCTION ledger_account_balance(
    p_account bigint, OUT debits_pending bigint, OUT debits_posted bigint,
    OUT credits_pending bigint, OUT credits_posted bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    a ledger_account%ROWTYPE;
BEGIN
    SELECT * INTO a FROM ledger_account WHERE id = p_account;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF a.debits_must_not_exceed_credits THEN
        debits_pending := a.debits_pending;
        debits_posted := a.debits_posted;
        credits_pending := a.credits_pending;
        credits_posted := a.credits_posted;
        RETURN;
    END IF;
    SELECT coalesce(sum(e.amount) FILTER (WHERE e.amount > 0 AND t.status = 'pending'), 0),
           coalesce(sum(e.amount) FILTER (WHERE e.amount > 0 AND t.kind IN ('single', 'post')), 0),
           coalesce(-sum(e.amount) FILTER (WHERE e.amount < 0 AND t.status = 'pending'), 0),
           coalesce(-sum(e.amount) FILTER (WHERE e.amount < 0 AND t.kind IN ('single', 'post')), 0)
    INTO debits_pending, debits_posted, credits_pending, credits_posted
    FROM ledger_entry e JOIN ledger_transfer t ON t.id = e.transfer_id
    WHERE e.account_id = p_account;
END $$;
