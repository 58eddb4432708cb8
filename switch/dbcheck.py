"""`loyalty db check`: prove the ledger's (and the campaigns') invariants on a live database.

Each check is a query that returns the violating rows (none when the invariant holds) and
the number of rows it examined, so the report says both what was proved and over how much.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Check:
    name: str
    examined_sql: str
    violations_sql: str


# Confirmed purchases with a discount funded by the network or a sponsor whose payable
# (above zero) the confirmed refunds gave back whole.
_FULLY_REFUNDED = """
    SELECT o.id, o.rrn FROM txn o
    WHERE o.state = 'CONFIRMED' AND o.kind <> 'refund' AND (o.quote->>'payable')::bigint > 0
      AND EXISTS (SELECT 1 FROM txn_grant g WHERE g.txn_id = o.id AND g.effect = 'discount'
                  AND g.funder_kind <> 'merchant')
      AND (o.quote->>'payable')::bigint = (
          SELECT sum(r.amount_rial) FROM txn r
          WHERE r.original_txn_id = o.id AND r.kind = 'refund' AND r.state = 'CONFIRMED')"""

CHECKS: tuple[Check, ...] = (
    Check(
        "every transfer's entries sum to zero",
        "SELECT count(*) FROM ledger_transfer",
        """SELECT transfer_id, sum(amount) FROM ledger_entry
           GROUP BY transfer_id HAVING sum(amount) <> 0""",
    ),
    Check(
        "every entry's account has its transfer's unit",
        "SELECT count(*) FROM ledger_entry",
        """SELECT e.id, a.unit, t.unit FROM ledger_entry e
           JOIN ledger_account a ON a.id = e.account_id
           JOIN ledger_transfer t ON t.id = e.transfer_id WHERE a.unit <> t.unit""",
    ),
    Check(
        "entries exist exactly where a transfer moves value",
        "SELECT count(*) FROM ledger_transfer",
        """SELECT t.id, t.kind, count(e.id) FROM ledger_transfer t
           LEFT JOIN ledger_entry e ON e.transfer_id = t.id
           GROUP BY t.id, t.kind
           HAVING (t.kind IN ('void', 'expire') AND count(e.id) > 0)
               OR (t.kind = 'single' AND count(e.id) < 2)
               OR (t.kind = 'pending' AND (count(e.id) <> 2
                   OR sum(e.amount) FILTER (WHERE e.amount > 0) <> t.amount))
               OR (t.kind = 'post' AND (count(e.id) <> 2
                   OR sum(e.amount) FILTER (WHERE e.amount > 0) <> t.amount))""",
    ),
    Check(
        "every running total equals the sum of its account's entries",
        "SELECT count(*) FROM ledger_account WHERE debits_must_not_exceed_credits",
        """WITH e AS (
             SELECT e.account_id, e.amount,
                    t.kind IN ('single', 'post') AS posted, t.status = 'pending' AS pending
             FROM ledger_entry e JOIN ledger_transfer t ON t.id = e.transfer_id),
           sums AS (
             SELECT account_id,
               coalesce(sum(amount) FILTER (WHERE amount > 0 AND posted), 0) AS dpo,
               coalesce(-sum(amount) FILTER (WHERE amount < 0 AND posted), 0) AS cpo,
               coalesce(sum(amount) FILTER (WHERE amount > 0 AND pending), 0) AS dpe,
               coalesce(-sum(amount) FILTER (WHERE amount < 0 AND pending), 0) AS cpe
             FROM e GROUP BY account_id)
           SELECT a.id, a.key FROM ledger_account a LEFT JOIN sums s ON s.account_id = a.id
           WHERE a.debits_must_not_exceed_credits AND (a.debits_posted <> coalesce(s.dpo, 0)
              OR a.credits_posted <> coalesce(s.cpo, 0)
              OR a.debits_pending <> coalesce(s.dpe, 0)
              OR a.credits_pending <> coalesce(s.cpe, 0))""",
    ),
    Check(
        "accounts whose balance is derived from entries keep no running totals",
        "SELECT count(*) FROM ledger_account WHERE NOT debits_must_not_exceed_credits",
        """SELECT id, key FROM ledger_account WHERE NOT debits_must_not_exceed_credits
           AND (debits_pending, debits_posted, credits_pending, credits_posted) <> (0, 0, 0, 0)""",
    ),
    Check(
        "no hold is resolved twice, and each hold's status matches its resolution",
        "SELECT count(*) FROM ledger_transfer WHERE kind = 'pending'",
        """SELECT p.id, p.status, array_agg(r.kind) FROM ledger_transfer p
           LEFT JOIN ledger_transfer r ON r.pending_id = p.id
           WHERE p.kind = 'pending' GROUP BY p.id, p.status
           HAVING count(r.id) > 1
               OR (p.status = 'pending' AND count(r.id) <> 0)
               OR (p.status = 'posted' AND array_agg(r.kind) <> ARRAY['post'])
               OR (p.status = 'voided' AND array_agg(r.kind) <> ARRAY['void'])
               OR (p.status = 'expired' AND array_agg(r.kind) <> ARRAY['expire'])""",
    ),
    Check(
        "no post exceeds its hold",
        "SELECT count(*) FROM ledger_transfer WHERE kind = 'post'",
        """SELECT r.id FROM ledger_transfer r JOIN ledger_transfer p ON p.id = r.pending_id
           WHERE r.kind = 'post' AND r.amount > p.amount""",
    ),
    Check(
        "no card balance is negative (pending debits included)",
        "SELECT count(*) FROM ledger_account WHERE debits_must_not_exceed_credits",
        """SELECT id, key FROM ledger_account WHERE debits_must_not_exceed_credits
           AND debits_posted + debits_pending > credits_posted""",
    ),
    Check(
        "settlement agrees with the ledger: settled payables, payouts, window membership",
        "SELECT count(*) FROM ledger_account",
        # 1. Postings under the transactions of settled windows and the windows' own
        #    transfers (netting, payouts) leave each merchant payable at what its last
        #    settled position carried forward; 2. every position's payout was instructed;
        # 3. a transaction's window is the same in settlement_item and txn.
        """WITH settled AS (
             SELECT window_id, id AS seq FROM settlement_window_event WHERE state = 'SETTLED'),
           refs AS (
             SELECT x.rrn::text AS ref FROM txn x JOIN settled s
               ON s.window_id = x.settlement_window_id
             UNION ALL SELECT 'settlement:W' || window_id FROM settled),
           paid AS (
             SELECT a.merchant_id, (-sum(e.amount))::bigint AS balance
             FROM refs JOIN ledger_transfer t ON t.ref = refs.ref AND t.kind IN ('single', 'post')
             JOIN ledger_entry e ON e.transfer_id = t.id
             JOIN ledger_account a ON a.id = e.account_id AND a.kind = 'merchant_payable'
             GROUP BY a.merchant_id),
           last AS (
             SELECT DISTINCT ON (p.merchant_id) p.merchant_id, p.carried_forward_rial
             FROM settlement_position p JOIN settled s USING (window_id)
             ORDER BY p.merchant_id, s.seq DESC)
           SELECT 'payable' AS what, merchant_id AS id, paid.balance AS got,
                  last.carried_forward_rial AS expected
           FROM paid FULL JOIN last USING (merchant_id)
           WHERE coalesce(paid.balance, 0) <> coalesce(last.carried_forward_rial, 0)
           UNION ALL
           SELECT 'payout', p.merchant_id, o.amount_rial, p.payout_rial
           FROM settlement_position p LEFT JOIN settlement_payout o USING (window_id, merchant_id)
           WHERE coalesce(o.amount_rial, 0) <> p.payout_rial
           UNION ALL
           SELECT 'window', i.txn_id, x.settlement_window_id, i.window_id
           FROM settlement_item i JOIN txn x ON x.id = i.txn_id
           WHERE x.settlement_window_id IS DISTINCT FROM i.window_id""",
    ),
    Check(
        "every store-credit and points account's open lots sum to its ledger balance",
        "SELECT count(*) FROM ledger_account WHERE kind IN ('card_credit', 'card_points')",
        """SELECT a.id, a.key, a.credits_posted - a.debits_posted, coalesce(sum(l.remaining), 0)
           FROM ledger_account a LEFT JOIN ledger_lot l ON l.account_id = a.id
           WHERE a.kind IN ('card_credit', 'card_points')
           GROUP BY a.id HAVING a.credits_posted - a.debits_posted
                                <> coalesce(sum(l.remaining), 0)""",
    ),
    Check(
        "every lot's draws, less what was given back, are what it lost, within its amount",
        "SELECT count(*) FROM ledger_lot",
        """SELECT l.id, l.amount, l.remaining, coalesce(sum(d.amount), 0)
           FROM ledger_lot l LEFT JOIN ledger_lot_draw d ON d.lot_id = l.id
           GROUP BY l.id
           HAVING l.amount - coalesce(sum(d.amount), 0) <> l.remaining
               OR coalesce(sum(d.amount), 0) NOT BETWEEN 0 AND l.amount""",
    ),
    Check(
        "no lot movement is undone beyond what it moved, nor given back to another lot",
        "SELECT count(*) FROM ledger_lot_draw WHERE undoes IS NOT NULL",
        # What stands of a movement: its size less what stands of the movements undoing it.
        """WITH u AS (
             SELECT u.undoes, u.lot_id, u.amount, abs(u.amount) - coalesce(
                      (SELECT sum(abs(v.amount)) FROM ledger_lot_draw v
                       WHERE v.undoes = u.id), 0) AS stands
             FROM ledger_lot_draw u WHERE u.undoes IS NOT NULL)
           SELECT d.id FROM ledger_lot_draw d JOIN u ON u.undoes = d.id
           GROUP BY d.id, d.amount
           HAVING sum(u.stands) > abs(d.amount) OR bool_or(sign(u.amount) = sign(d.amount))
               OR bool_or(u.amount < 0 AND u.lot_id <> d.lot_id)""",
    ),
    Check(
        "every store-credit and points entry moved its account's lots by its amount",
        "SELECT count(*) FROM ledger_lot_draw WHERE transfer_id IS NOT NULL",
        # From the first recorded movement on: 0021 summed earlier draws per lot.
        """WITH since AS (SELECT min(transfer_id) AS first FROM ledger_lot_draw),
           moved AS (
             SELECT d.transfer_id, l.account_id, d.amount FROM ledger_lot_draw d
             JOIN ledger_lot l ON l.id = d.lot_id WHERE d.transfer_id IS NOT NULL
             UNION ALL
             SELECT transfer_id, account_id, -amount FROM ledger_lot
             WHERE transfer_id IS NOT NULL
             UNION ALL
             SELECT e.transfer_id, e.account_id, -e.amount FROM ledger_entry e
             JOIN ledger_transfer t ON t.id = e.transfer_id AND t.kind IN ('single', 'post')
             JOIN ledger_account a ON a.id = e.account_id
                  AND a.kind IN ('card_credit', 'card_points'))
           SELECT transfer_id, account_id, sum(amount) FROM moved, since
           WHERE transfer_id >= since.first
           GROUP BY transfer_id, account_id HAVING sum(amount) <> 0""",
    ),
    Check(
        "no lot movement of a reversed transaction still stands",
        "SELECT count(DISTINCT ref) FROM ledger_transfer WHERE code = 'reversal'",
        # A reversal undoes every movement of its transaction on every card account, also
        # where the transaction nets to zero (migrations/0030_lot_reversal_net_zero.sql).
        """SELECT w.id, t.ref, l.account_id, w.amount, ledger_lot_left(w.id, w.amount)
           FROM ledger_transfer r
           JOIN ledger_transfer t ON t.ref = r.ref AND t.code <> 'reversal'
           JOIN ledger_lot_draw w ON w.transfer_id = t.id
           JOIN ledger_lot l ON l.id = w.lot_id
           WHERE r.code = 'reversal' AND ledger_lot_left(w.id, w.amount) <> 0""",
    ),
    Check(
        "every points lot is drawn only by debits that credit its issuer",
        """SELECT count(*) FROM ledger_lot_draw w JOIN ledger_lot l ON l.id = w.lot_id
           JOIN ledger_account a ON a.id = l.account_id AND a.kind = 'card_points'
           WHERE w.amount > 0 AND w.transfer_id IS NOT NULL""",
        # A lot's points are worth its issuer's points value
        # (migrations/0032_points_lot_issuer.sql).
        """SELECT w.id, w.transfer_id, l.id AS lot_id,
                  ledger_points_lot_issuer(l.transfer_id, l.account_id) AS issuer
           FROM ledger_lot_draw w JOIN ledger_lot l ON l.id = w.lot_id
           JOIN ledger_account a ON a.id = l.account_id AND a.kind = 'card_points'
           WHERE w.amount > 0 AND w.transfer_id IS NOT NULL
             AND NOT EXISTS (
                   SELECT 1 FROM ledger_entry e WHERE e.transfer_id = w.transfer_id
                     AND e.amount < 0
                     AND e.account_id = ledger_points_lot_issuer(l.transfer_id, l.account_id))""",
    ),
    Check(
        "no issuer gets back more store credit than a purchase drew from it, and a refunded "
        "whole gives each all of it",
        """SELECT count(DISTINCT r.original_txn_id) FROM txn r
           JOIN txn o ON o.id = r.original_txn_id AND o.kind = 'credit_purchase'
           WHERE r.kind = 'refund'""",
        # Per purchase and credit account: what its posted holds took, and what the posted
        # holds of its standing refunds gave back (migrations/0028_refund_issuer_split.sql).
        """WITH moved AS (
             SELECT o.id, e.account_id, e.amount AS drawn, 0 AS back FROM txn o
             JOIN ledger_transfer t ON t.ref = o.rrn AND t.kind = 'post'
                                   AND t.code = 'credit_purchase'
             JOIN ledger_entry e ON e.transfer_id = t.id AND e.amount > 0
             WHERE o.kind = 'credit_purchase' AND o.state = 'CONFIRMED'
             UNION ALL
             SELECT o.id, e.account_id, 0, -e.amount FROM txn r
             JOIN txn o ON o.id = r.original_txn_id AND o.kind = 'credit_purchase'
             JOIN ledger_transfer t ON t.ref = r.rrn AND t.kind = 'post' AND t.code = 'refund'
             JOIN ledger_entry e ON e.transfer_id = t.id AND e.amount < 0
             WHERE r.kind = 'refund' AND r.state = 'CONFIRMED'),
           issuer AS (
             SELECT id, account_id, sum(drawn)::bigint AS drawn, sum(back)::bigint AS back
             FROM moved
             GROUP BY id, account_id),
           refunded AS (
             SELECT original_txn_id AS id, sum(amount_rial) AS amount FROM txn
             WHERE kind = 'refund' AND state = 'CONFIRMED' GROUP BY original_txn_id)
           SELECT o.rrn, i.account_id, i.drawn, i.back FROM issuer i
           JOIN txn o ON o.id = i.id LEFT JOIN refunded f ON f.id = i.id
           WHERE i.back > i.drawn
              OR (f.amount = (o.quote->>'payable')::bigint AND i.back <> i.drawn)""",
    ),
    Check(
        "no purchase's fee is given back beyond it, and a refunded whole gives it all back",
        "SELECT count(DISTINCT original_txn_id) FROM txn WHERE kind = 'refund'",
        # What each standing refund gave back is what it posted (code refund_fee).
        """WITH back AS (
             SELECT r.original_txn_id AS id, sum(r.amount_rial) AS refunded,
                    coalesce(sum((SELECT sum(e.amount) FROM ledger_transfer t
                                  JOIN ledger_entry e ON e.transfer_id = t.id
                                  WHERE t.ref = r.rrn AND t.code = 'refund_fee'
                                    AND e.amount > 0)), 0) AS fee
             FROM txn r WHERE r.kind = 'refund' AND r.state = 'CONFIRMED'
             GROUP BY r.original_txn_id)
           SELECT o.rrn, back.fee, o.quote->>'network_fee' FROM back JOIN txn o ON o.id = back.id
           WHERE back.fee > (o.quote->>'network_fee')::bigint
              OR (back.refunded = (o.quote->>'payable')::bigint
                  AND back.fee <> (o.quote->>'network_fee')::bigint)""",
    ),
    Check(
        "every campaign's used budget is what its live transactions reserved, less what live "
        "refunds took back",
        "SELECT count(*) FROM campaign k WHERE campaign_budget(k) IS NOT NULL",
        # A confirmed refund gives a budget what it took back of the rule's grants
        # (migrations/0024_refund_mirror.sql); its purchase is live while it stands.
        """WITH used AS (
             SELECT v.rule_id, v.amount FROM txn_reservation v
             JOIN txn x ON x.id = v.txn_id AND x.state <> 'VOIDED' WHERE v.budget
             UNION ALL
             SELECT g.rule_id, -c.taken FROM txn_clawback c
             JOIN txn r ON r.id = c.txn_id AND r.state = 'CONFIRMED'
             JOIN txn_grant g ON g.txn_id = c.original_txn_id AND g.seq = c.seq
             JOIN txn_reservation v ON v.txn_id = g.txn_id AND v.rule_id = g.rule_id
                                   AND v.budget)
           SELECT k.id, k.budget_used_rial + k.budget_used_units, coalesce(sum(u.amount), 0)
           FROM campaign k LEFT JOIN used u ON u.rule_id = k.id
           GROUP BY k.id
           HAVING k.budget_used_rial + k.budget_used_units <> coalesce(sum(u.amount), 0)""",
    ),
    Check(
        "every card's daily amount per rule is what its live transactions reserved",
        "SELECT count(*) FROM card_rule_day",
        """SELECT d.rule_id, d.day, d.granted, coalesce(sum(v.amount), 0) FROM card_rule_day d
           LEFT JOIN (SELECT v.* FROM txn_reservation v
                      JOIN txn x ON x.id = v.txn_id AND x.state <> 'VOIDED' WHERE v.daily) v
                  ON (v.pan_hash, v.rule_id, v.day) = (d.pan_hash, d.rule_id, d.day)
           GROUP BY d.pan_hash, d.rule_id, d.day
           HAVING d.granted <> coalesce(sum(v.amount), 0)""",
    ),
    Check(
        "every priced transaction's discount is the sum of its discount grants",
        "SELECT count(*) FROM txn WHERE pricing IS NOT NULL",
        """SELECT x.rrn FROM txn x LEFT JOIN txn_grant g
                  ON g.txn_id = x.id AND g.effect = 'discount'
           WHERE x.pricing IS NOT NULL
           GROUP BY x.id HAVING (x.quote->>'discount')::bigint <> coalesce(sum(g.amount), 0)""",
    ),
    Check(
        "no grant is taken back by live refunds beyond what it granted",
        "SELECT count(DISTINCT (original_txn_id, seq)) FROM txn_clawback",
        """SELECT c.original_txn_id, c.seq FROM txn_clawback c
                  JOIN txn r ON r.id = c.txn_id AND r.state = 'CONFIRMED'
                  JOIN txn_grant g ON g.txn_id = c.original_txn_id AND g.seq = c.seq
           GROUP BY c.original_txn_id, c.seq, g.amount HAVING sum(c.due) > g.amount""",
    ),
    Check(
        "every confirmed refund's clawback postings are what it recorded as taken",
        "SELECT count(DISTINCT txn_id) FROM txn_clawback",
        # A merchant-funded discount's share is inside the refunded payable: nothing posted.
        """SELECT r.rrn FROM txn r
           JOIN (SELECT c.txn_id, g.effect || '_clawback' AS code, sum(c.taken) AS taken
                 FROM txn_clawback c
                 JOIN txn_grant g ON g.txn_id = c.original_txn_id AND g.seq = c.seq
                 WHERE NOT (g.effect = 'discount' AND g.funder_kind = 'merchant')
                 GROUP BY c.txn_id, g.effect) k ON k.txn_id = r.id
           WHERE r.state = 'CONFIRMED' AND k.taken <> coalesce((
               SELECT sum(e.amount) FROM ledger_transfer t
               JOIN ledger_entry e ON e.transfer_id = t.id
               WHERE t.ref = r.rrn AND t.code = k.code AND e.amount > 0), 0)""",
    ),
    Check(
        "every points redemption took its points from the card and gave its credit to it",
        "SELECT count(*) FROM points_redemption",
        # Net, under the redemption's ref: the card's points debited by `points`, its credit
        # of the issuer credited with `rial`, and nothing else of the card's moved.
        """SELECT r.id, p.points, p.rial, p.other FROM points_redemption r
           LEFT JOIN LATERAL (
             SELECT coalesce(sum(e.amount) FILTER (WHERE a.key = ledger_account_key(
                        'card_points', r.card_id, NULL, NULL)), 0) AS points,
                    coalesce(-sum(e.amount) FILTER (WHERE a.key = ledger_account_key(
                        'card_credit', r.card_id, r.merchant_id, r.network_id)), 0) AS rial,
                    count(*) FILTER (WHERE a.card_id IS NOT NULL AND a.key NOT IN (
                        ledger_account_key('card_points', r.card_id, NULL, NULL),
                        ledger_account_key('card_credit', r.card_id, r.merchant_id,
                                           r.network_id))) AS other
             FROM ledger_transfer t JOIN ledger_entry e ON e.transfer_id = t.id
             JOIN ledger_account a ON a.id = e.account_id
             WHERE t.ref = 'redeem:' || r.id AND t.kind = 'single') p ON true
           WHERE (p.points, p.rial, p.other) <> (r.points, r.rial, 0)""",
    ),
    Check(
        "every fully refunded purchase leaves each funder's discount funding for it at zero",
        f"SELECT count(*) FROM ({_FULLY_REFUNDED}) f",
        # What the purchase and its confirmed refunds posted to discount_funding accounts.
        f"""SELECT f.rrn, a.key, sum(e.amount) FROM ({_FULLY_REFUNDED}) f
           JOIN txn r ON r.id = f.id OR (r.original_txn_id = f.id AND r.kind = 'refund'
                                         AND r.state = 'CONFIRMED')
           JOIN ledger_transfer t ON t.ref = r.rrn AND t.kind IN ('single', 'post')
           JOIN ledger_entry e ON e.transfer_id = t.id
           JOIN ledger_account a ON a.id = e.account_id AND a.kind = 'discount_funding'
           GROUP BY f.rrn, a.key HAVING sum(e.amount) <> 0""",
    ),
    Check(
        "the ledger as a whole balances, per unit",
        "SELECT count(DISTINCT unit) FROM ledger_account",
        """SELECT t.unit FROM ledger_entry e JOIN ledger_transfer t ON t.id = e.transfer_id
           GROUP BY t.unit
           HAVING sum(e.amount) FILTER (WHERE t.kind IN ('single', 'post')) <> 0
               OR sum(e.amount) FILTER (WHERE t.status = 'pending') <> 0""",
    ),
    Check(
        "every campaign's event history ends at its version and status",
        "SELECT count(*) FROM campaign",
        """SELECT c.id, c.version, c.status FROM campaign c
           WHERE NOT EXISTS (SELECT 1 FROM campaign_event e WHERE e.campaign_id = c.id
                             AND e.event = 'created' AND e.version = 1)
              OR c.version IS DISTINCT FROM (
                   SELECT e.version FROM campaign_event e WHERE e.campaign_id = c.id
                   ORDER BY e.id DESC LIMIT 1)
              OR c.status IS DISTINCT FROM (
                   SELECT CASE e.event WHEN 'created' THEN e.detail ->> 'status'
                                       WHEN 'paused' THEN 'paused' ELSE 'active' END
                   FROM campaign_event e WHERE e.campaign_id = c.id AND e.event <> 'updated'
                   ORDER BY e.id DESC LIMIT 1)""",
    ),
)


@dataclass(frozen=True)
class Outcome:
    check: Check
    examined: int
    violations: list[asyncpg.Record]

    @property
    def ok(self) -> bool:
        return not self.violations


async def run_checks(conn: asyncpg.Connection, sample_max: int = 5) -> list[Outcome]:
    """Run every check in one repeatable-read snapshot, so they all see the same state."""
    outcomes = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for check in CHECKS:
            examined = await conn.fetchval(check.examined_sql)
            rows = await conn.fetch(f"{check.violations_sql} LIMIT {int(sample_max)}")
            outcomes.append(Outcome(check, int(examined), list(rows)))
    return outcomes


def report(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        mark = "ok  " if o.ok else "FAIL"
        lines.append(f"{mark} {o.check.name} ({o.examined} examined)")
        lines.extend(f"       violation: {tuple(row)}" for row in o.violations)
    failed = sum(not o.ok for o in outcomes)
    lines.append(f"db check: {len(outcomes) - failed} invariants hold, {failed} violated")
    return "\n".join(lines)
