-- The request path's small SQL helpers were declared IMMUTABLE although they call STABLE
-- functions (jsonb_build_object, text || bigint, to_char): the planner then refuses to
-- inline them, and every use was a separate SQL-function call. Declared STABLE (what they
-- are), they are inlined into the statements that use them.
ALTER FUNCTION switch_declined(text) STABLE;
ALTER FUNCTION switch_price_again(jsonb) STABLE;
ALTER FUNCTION switch_purchase_basis(switch_terminal, bigint) STABLE;
ALTER FUNCTION ledger_account_key(text, bigint, bigint, bigint) STABLE;
ALTER FUNCTION switch_expiry_passed(text, timestamptz) STABLE;
ALTER FUNCTION switch_approved(text, text, bigint, jsonb) STABLE;
