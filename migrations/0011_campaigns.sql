-- Campaigns: the pricing rules of a store network or one of its merchants, and their history.
--
-- `spec` is the campaign as validated by switch/campaign_spec.py (its JSON form, database
-- ids included); the columns beside it copy what the switch selects and limits by, and a
-- CHECK keeps every copy equal to the spec, whoever writes. The budget counter
-- (budget_used_rial) is the only column the request path changes; it can never pass the
-- budget. A change of spec or status bumps `version` (the trigger does it, so no writer can
-- forget) and appends a campaign_event row; events are never changed or deleted.
CREATE TABLE campaign (
    id                text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._-]{1,63}$'),
    network_id        bigint NOT NULL REFERENCES store_network (id),
    merchant_id       bigint REFERENCES merchant (id),  -- NULL: network-wide
    kind              text NOT NULL CHECK (kind IN (
                          'percent_discount', 'fixed_discount', 'first_purchases',
                          'stamp_card', 'cashback', 'top_up_bonus', 'points', 'lottery')),
    priority          integer NOT NULL,
    spec              jsonb NOT NULL,
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
    -- Budgets of discounts and store credit; points and entries budgets stay in the spec.
    budget_rial       bigint CHECK (budget_rial >= 0),
    budget_used_rial  bigint NOT NULL DEFAULT 0 CHECK (budget_used_rial >= 0),
    version           bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (budget_rial IS NULL OR budget_used_rial <= budget_rial),
    CHECK (spec ->> 'id' = id AND spec ->> 'kind' = kind
           AND (spec ->> 'priority')::integer = priority
           AND (spec ->> 'network_id')::bigint = network_id
           AND (spec ->> 'merchant_id')::bigint IS NOT DISTINCT FROM merchant_id
           AND (spec ->> 'budget_rial')::bigint IS NOT DISTINCT FROM budget_rial)
);
CREATE INDEX campaign_network_idx ON campaign (network_id) WHERE status = 'active';
CREATE INDEX campaign_merchant_idx ON campaign (merchant_id) WHERE merchant_id IS NOT NULL;

CREATE TABLE campaign_event (
    id           bigserial PRIMARY KEY,
    campaign_id  text NOT NULL REFERENCES campaign (id),
    event        text NOT NULL CHECK (event IN ('created', 'updated', 'paused', 'resumed')),
    version      bigint NOT NULL,  -- the campaign's version after the event
    at           timestamptz NOT NULL DEFAULT now(),
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX campaign_event_campaign_idx ON campaign_event (campaign_id, id);

CREATE FUNCTION campaign_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'campaign_event is append-only: % refused', TG_OP
        USING ERRCODE = 'raise_exception';
END $$;
CREATE TRIGGER campaign_event_append_only BEFORE UPDATE OR DELETE ON campaign_event
    FOR EACH ROW EXECUTE FUNCTION campaign_event_append_only();

CREATE FUNCTION campaign_no_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'campaign %: campaigns are paused, never deleted', OLD.id
        USING ERRCODE = 'raise_exception';
END $$;
CREATE TRIGGER campaign_no_delete BEFORE DELETE ON campaign
    FOR EACH ROW EXECUTE FUNCTION campaign_no_delete();

-- Version and timestamps follow the row: a change of spec or status is a new version;
-- anything else (the budget counter) keeps it.
CREATE FUNCTION campaign_versioned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created_at := OLD.created_at;
    IF NEW.spec IS DISTINCT FROM OLD.spec OR NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
    ELSE
        NEW.version := OLD.version;
        NEW.updated_at := OLD.updated_at;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER campaign_versioned BEFORE UPDATE ON campaign
    FOR EACH ROW EXECUTE FUNCTION campaign_versioned();

-- Every change leaves an event, whoever writes; `detail` keeps the spec it replaced.
CREATE FUNCTION campaign_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO campaign_event (campaign_id, event, version, detail)
        VALUES (NEW.id, 'created', NEW.version, jsonb_build_object('status', NEW.status));
        RETURN NULL;
    END IF;
    IF NEW.spec IS DISTINCT FROM OLD.spec THEN
        INSERT INTO campaign_event (campaign_id, event, version, detail)
        VALUES (NEW.id, 'updated', NEW.version,
                jsonb_build_object('previous_version', OLD.version, 'previous_spec', OLD.spec));
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO campaign_event (campaign_id, event, version)
        VALUES (NEW.id, CASE NEW.status WHEN 'paused' THEN 'paused' ELSE 'resumed' END,
                NEW.version);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER campaign_log AFTER INSERT OR UPDATE ON campaign
    FOR EACH ROW EXECUTE FUNCTION campaign_log();
