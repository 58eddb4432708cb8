-- Fix: an RRN passed to the request functions was typed text, so `txn.rrn = <text>`
-- compared as text and could not use txn's unique index on rrn (char(12)): every confirm
-- and refund read the whole txn table. RRNs are char(12) like the column.
ALTER TYPE switch_advice ALTER ATTRIBUTE rrn TYPE char(12);
ALTER TYPE switch_auth ALTER ATTRIBUTE original_rrn TYPE char(12);

-- Plans: the request path's statements are all lookups by key, for which the generic plan
-- is the right one, but PL/pgSQL kept building custom plans for some of them on every
-- call (about 15% of a backend's time). The setting holds for everything the two
-- entry points call, and only for them.
ALTER FUNCTION switch_handle(switch_request, switch_card, switch_auth, switch_advice)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION switch_sweep(timestamptz, integer) SET plan_cache_mode = force_generic_plan;
