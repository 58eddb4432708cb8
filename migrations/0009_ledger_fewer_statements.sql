-- The ledger functions of 0006, same semantics, fewer statements.
--
-- Every statement a PL/pgSQL function runs pays executor set-up, and every INSERT or UPDATE
-- also re-reads the table's CHECK constraints; on the switch's request path that, not the
-- work itself, was most of the database's time. So each function now
-- * locks the accounts that keep totals with one statement (the existence and unit check
--   that ledger_lock_accounts did in a second one is folded into the funds check);
-- * inserts a transfer and its entries with one statement (a data-modifying CTE);
-- * updates the running totals of both sides with one statement;
-- * scans accounts by `id = ANY (...)`, never by a join with unnest() (whose generic plan
--   may be a hash join over the whole account table).
-- Lock order (id order, accounts with totals only), statuses, errors and the rows written
-- are as before.

-- An immediate, balanced, multi-entry transfer. Status 'ok' or 'exceeds_credits'.
-- Malformed input (unbalanced, unknown account, wrong unit) is a programmer error: it raises.
CREATE OR REPLACE FUNCTION ledger_transfer_create(
    p_unit text, p_code text, p_ref text, p_accounts bigint[], p_amounts bigint[],
    OUT status text, OUT transfer_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_distinct integer;
    v_found    integer;
    v_short    integer;
BEGIN
    IF cardinality(p_accounts) < 2 OR cardinality(p_accounts) <> cardinality(p_amounts)
       OR (SELECT sum(a) FROM unnest(p_amounts) AS a) <> 0
       OR EXISTS (SELECT 1 FROM unnest(p_amounts) AS a WHERE a = 0) THEN
        RAISE EXCEPTION 'ledger: transfer must have >= 2 non-zero entries summing to zero';
    END IF;
    PERFORM 1 FROM ledger_account a
    WHERE a.id = ANY (p_accounts) AND a.unit = p_unit AND a.debits_must_not_exceed_credits
    ORDER BY a.id FOR UPDATE;
    -- Every account must exist with the unit; the net debit per constrained account must
    -- fit what it holds (pending debits included).
    SELECT (SELECT count(DISTINCT x) FROM unnest(p_accounts) AS x), count(*),
           count(*) FILTER (WHERE a.debits_must_not_exceed_credits AND n.net > 0
                            AND a.debits_posted + a.debits_pending + n.net > a.credits_posted)
    INTO v_distinct, v_found, v_short
    FROM ledger_account a,
         LATERAL (SELECT sum(e.amount) AS net
                  FROM unnest(p_accounts, p_amounts) AS e (account, amount)
                  WHERE e.account = a.id) AS n
    WHERE a.id = ANY (p_accounts) AND a.unit = p_unit;
    IF v_found <> v_distinct THEN
        RAISE EXCEPTION 'ledger: unknown account or unit mismatch in %', p_accounts;
    END IF;
    IF v_short > 0 THEN
        status := 'exceeds_credits';
        RETURN;
    END IF;
    WITH t AS (
        INSERT INTO ledger_transfer (unit, kind, code, ref, amount)
        VALUES (p_unit, 'single', p_code, p_ref,
                (SELECT sum(a) FROM unnest(p_amounts) AS a WHERE a > 0))
        RETURNING id
    ), entries AS (
        INSERT INTO ledger_entry (transfer_id, account_id, amount)
        SELECT t.id, e.account, e.amount
        FROM t, unnest(p_accounts, p_amounts) AS e (account, amount)
    )
    SELECT t.id INTO transfer_id FROM t;
    UPDATE ledger_account a
    SET debits_posted = a.debits_posted + (
            SELECT coalesce(sum(e.amount) FILTER (WHERE e.amount > 0), 0)
            FROM unnest(p_accounts, p_amounts) AS e (account, amount) WHERE e.account = a.id),
        credits_posted = a.credits_posted + (
            SELECT coalesce(-sum(e.amount) FILTER (WHERE e.amount < 0), 0)
            FROM unnest(p_accounts, p_amounts) AS e (account, amount) WHERE e.account = a.id)
    WHERE a.id = ANY (p_accounts) AND a.debits_must_not_exceed_credits;
    status := 'ok';
END $$;

-- A hold: a pending transfer of `p_amount` from `p_debit` to `p_credit`, expiring at
-- `p_timeout_at`. Status 'ok' or 'exceeds_credits'.
CREATE OR REPLACE FUNCTION ledger_hold(
    p_unit text, p_code text, p_ref text, p_debit bigint, p_credit bigint, p_amount bigint,
    p_timeout_at timestamptz, OUT status text, OUT transfer_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_found integer;
    v_ok    boolean;
BEGIN
    IF p_amount <= 0 OR p_debit = p_credit OR p_timeout_at IS NULL THEN
        RAISE EXCEPTION 'ledger: hold needs a positive amount, two accounts and a timeout';
    END IF;
    PERFORM 1 FROM ledger_account a
    WHERE a.id IN (p_debit, p_credit) AND a.unit = p_unit AND a.debits_must_not_exceed_credits
    ORDER BY a.id FOR UPDATE;
    SELECT count(*),
           bool_and(a.id <> p_debit OR NOT a.debits_must_not_exceed_credits
                    OR a.debits_posted + a.debits_pending + p_amount <= a.credits_posted)
    INTO v_found, v_ok
    FROM ledger_account a WHERE a.id IN (p_debit, p_credit) AND a.unit = p_unit;
    IF v_found <> 2 THEN
        RAISE EXCEPTION 'ledger: unknown account or unit mismatch';
    END IF;
    IF NOT v_ok THEN
        status := 'exceeds_credits';
        RETURN;
    END IF;
    WITH t AS (
        INSERT INTO ledger_transfer (unit, kind, code, ref, amount, timeout_at, status)
        VALUES (p_unit, 'pending', p_code, p_ref, p_amount, p_timeout_at, 'pending')
        RETURNING id
    ), entries AS (
        INSERT INTO ledger_entry (transfer_id, account_id, amount)
        SELECT t.id, e.account, e.amount
        FROM t, (VALUES (p_debit, p_amount), (p_credit, -p_amount)) AS e (account, amount)
    )
    SELECT t.id INTO transfer_id FROM t;
    UPDATE ledger_account a
    SET debits_pending = a.debits_pending + CASE WHEN a.id = p_debit THEN p_amount ELSE 0 END,
        credits_pending = a.credits_pending + CASE WHEN a.id = p_credit THEN p_amount ELSE 0 END
    WHERE a.id IN (p_debit, p_credit) AND a.debits_must_not_exceed_credits;
    status := 'ok';
END $$;

-- Resolve a hold: p_action is 'post' (p_amount NULL = all of it), 'void' or 'expire'.
-- Status: 'ok', 'not_found', 'already_posted', 'already_voided', 'already_expired',
-- 'expired' (a post after the timeout: the hold is expired instead, and that is committed),
-- 'not_expired' (an expire before the timeout), 'exceeds_pending'.
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
    SELECT max(e.account_id) FILTER (WHERE e.amount > 0),
           max(e.account_id) FILTER (WHERE e.amount < 0)
    INTO v_deb, v_cred FROM ledger_entry e WHERE e.transfer_id = p.id;
    PERFORM 1 FROM ledger_account a
    WHERE a.id IN (v_deb, v_cred) AND a.unit = p.unit AND a.debits_must_not_exceed_credits
    ORDER BY a.id FOR UPDATE;
    WITH t AS (
        INSERT INTO ledger_transfer (unit, kind, code, ref, amount, pending_id)
        VALUES (p.unit, p_action, p.code, p.ref,
                CASE WHEN p_action = 'post' THEN v_post ELSE p.amount END, p.id)
        RETURNING id
    ), entries AS (
        INSERT INTO ledger_entry (transfer_id, account_id, amount)
        SELECT t.id, e.account, e.amount
        FROM t, (VALUES (v_deb, v_post), (v_cred, -v_post)) AS e (account, amount)
        WHERE v_post > 0
    )
    SELECT t.id INTO transfer_id FROM t;
    UPDATE ledger_account a
    SET debits_pending = a.debits_pending - CASE WHEN a.id = v_deb THEN p.amount ELSE 0 END,
        debits_posted = a.debits_posted + CASE WHEN a.id = v_deb THEN v_post ELSE 0 END,
        credits_pending = a.credits_pending - CASE WHEN a.id = v_cred THEN p.amount ELSE 0 END,
        credits_posted = a.credits_posted + CASE WHEN a.id = v_cred THEN v_post ELSE 0 END
    WHERE a.id IN (v_deb, v_cred) AND a.debits_must_not_exceed_credits;
    UPDATE ledger_transfer SET status = CASE p_action WHEN 'post' THEN 'posted'
                                                      WHEN 'void' THEN 'voided'
                                                      ELSE 'expired' END
    WHERE id = p.id;
    status := coalesce(status, 'ok');
END $$;
