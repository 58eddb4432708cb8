-- A reversal undoes the lot movements of every card account its transaction touched, even
-- where the transaction's postings there net to zero (review 2, defect 1).
--
-- 0021 undoes a transaction's lot movements from the lot trigger, on each entry a reversal
-- (ledger_mirror, code 'reversal') posts. ledger_mirror posts the net of the transaction per
-- account and no entry where that net is zero. A refund of a store-credit purchase that
-- earned cashback of the same issuer gives credit back to one card account and claws the
-- cashback back from it: a give-back to the purchase's (maybe never-expiring) lots and a
-- take from the cashback's (expiring) lot, netting to zero when the amounts match. Its
-- reversal then left both movements standing: the member kept the never-expiring credit
-- and lost the expiring one, and could repeat the cycle.
--
-- Now ledger_mirror, for a reversal, runs 0021's ledger_lot_reverse with a credit of zero
-- on each card_credit and card_points account where the transaction's postings net to zero
-- (it gives back what the transaction took and takes back what it gave back, as on any
-- other account), recording the movements under the reversal's last transfer. The account
-- is locked first, as the ledger does for an entry (its lock also guards its lots, 0013).
-- The postings of a transaction also move a merchant payable or an issuer's account, so a
-- reversal that moves card lots always posts a transfer to record them under.
-- `db check` proves the result: no lot movement of a reversed transaction still stands.

-- 0007's ledger_mirror, restated: it keeps the last transfer it posts, and a reversal then
-- undoes the lots of the card accounts that net to zero.
CREATE OR REPLACE FUNCTION ledger_mirror(p_ref text, p_code text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    u          record;
    v_status   text;
    v_transfer bigint;
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
        SELECT c.status, c.transfer_id INTO v_status, v_transfer
        FROM ledger_transfer_create(u.unit, p_code, p_ref, u.accounts, u.amounts) AS c;
        IF v_status <> 'ok' THEN
            RAISE EXCEPTION 'mirror refused' USING ERRCODE = 'SW003', DETAIL = v_status;
        END IF;
    END LOOP;
    IF p_code = 'reversal' THEN
        PERFORM ledger_lot_reverse_net_zero(p_ref, v_transfer);
    END IF;
    RETURN 'ok';
EXCEPTION WHEN SQLSTATE 'SW003' THEN  -- a savepoint, on this rare path only
    RETURN 'exceeds_credits';
END $$;

-- Undo transaction `p_ref`'s lot movements on the card accounts where its postings net to
-- zero (so reversal `p_transfer` posted no entry there); see the top of this file.
CREATE FUNCTION ledger_lot_reverse_net_zero(p_ref text, p_transfer bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a record;
BEGIN
    FOR a IN
        SELECT e.account_id FROM ledger_entry e
        JOIN ledger_transfer t ON t.id = e.transfer_id
        JOIN ledger_account c ON c.id = e.account_id AND c.kind IN ('card_credit', 'card_points')
        WHERE t.ref = p_ref AND t.kind IN ('single', 'post')
        GROUP BY e.account_id HAVING sum(e.amount) = 0
        ORDER BY e.account_id
    LOOP
        IF p_transfer IS NULL THEN
            RAISE EXCEPTION 'ledger: reversal of % moves lots of account % but posts nothing',
                p_ref, a.account_id;
        END IF;
        PERFORM 1 FROM ledger_account WHERE id = a.account_id FOR UPDATE;
        PERFORM ledger_lot_reverse(a.account_id, p_transfer, p_ref, 0);
    END LOOP;
END $$;
