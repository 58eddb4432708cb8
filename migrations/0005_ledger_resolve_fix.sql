-- Fix: in 0002, ledger_resolve read `transfer_id` unqualified where it is both a column of
-- ledger_entry and the function's OUT parameter, so every post, void and expire failed
-- with "column reference is ambiguous". Same function, with the columns qualified.

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
    SELECT e.account_id INTO v_deb FROM ledger_entry e WHERE e.transfer_id = p.id AND e.amount > 0;
    SELECT e.account_id INTO v_cred FROM ledger_entry e WHERE e.transfer_id = p.id AND e.amount < 0;
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
