-- Registry: store networks, merchants, BDK IDs, terminals, members, club and bank cards.
-- Validation that must hold for every writer lives here as constraints, not only in Python.

-- Sheba (Iranian IBAN): IR + 24 digits, ISO 7064 MOD 97-10. Rearranged: the 22-digit BBAN,
-- then 'IR' as digits (I=18, R=27), then the two check digits; the number mod 97 must be 1.
CREATE FUNCTION sheba_is_valid(s text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT s ~ '^IR[0-9]{24}$'
       AND (substr(s, 5) || '1827' || substr(s, 3, 2))::numeric % 97 = 1
$$;

CREATE TABLE store_network (
    id          bigserial PRIMARY KEY,
    code        text NOT NULL UNIQUE CHECK (code ~ '^[a-z0-9][a-z0-9-]{1,31}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    club_bin    char(6) NOT NULL UNIQUE CHECK (club_bin ~ '^[0-9]{6}$'),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE merchant (
    id                  bigserial PRIMARY KEY,
    network_id          bigint REFERENCES store_network (id),
    code                text NOT NULL UNIQUE CHECK (code ~ '^[a-z0-9][a-z0-9-]{1,31}$'),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    trade               text NOT NULL CHECK (length(trade) BETWEEN 1 AND 64),
    sheba               char(26) NOT NULL CHECK (sheba_is_valid(sheba)),
    -- Fee plan: the loyalty network's fee on each purchase, in basis points plus a fixed
    -- part, clamped to [fee_min_rial, fee_max_rial] (no maximum when NULL).
    fee_bp              integer NOT NULL DEFAULT 0 CHECK (fee_bp BETWEEN 0 AND 10000),
    fee_fixed_rial      bigint NOT NULL DEFAULT 0 CHECK (fee_fixed_rial >= 0),
    fee_min_rial        bigint NOT NULL DEFAULT 0 CHECK (fee_min_rial >= 0),
    fee_max_rial        bigint CHECK (fee_max_rial IS NULL OR fee_max_rial >= fee_min_rial),
    shaparak_fee_exempt boolean NOT NULL DEFAULT false,
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'suspended', 'closed')),
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- Base derivation keys: identity and status only. Key material lives in the key file.
CREATE TABLE bdk (
    id          char(8) PRIMARY KEY CHECK (id ~ '^[0-9A-F]{8}$'),
    label       text NOT NULL DEFAULT '',
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE terminal (
    id              bigserial PRIMARY KEY,
    tid             char(8) NOT NULL UNIQUE CHECK (tid ~ '^[0-9A-Z]{8}$'),
    merchant_id     bigint NOT NULL REFERENCES merchant (id),
    -- AES DUKPT initial key ID = BDK ID (4 bytes) || derivation ID (4 bytes), in hex.
    bdk_id          char(8) NOT NULL REFERENCES bdk (id),
    derivation_id   char(8) NOT NULL CHECK (derivation_id ~ '^[0-9A-F]{8}$'),
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'suspended', 'retired')),
    hold_timeout_s  integer CHECK (hold_timeout_s BETWEEN 1 AND 86400),  -- NULL: the default
    -- Highest KSN transaction counter accepted from this device (replay protection).
    ksn_counter_max bigint NOT NULL DEFAULT 0
                    CHECK (ksn_counter_max BETWEEN 0 AND 4294901760),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bdk_id, derivation_id)
);

CREATE TABLE member (
    id          bigserial PRIMARY KEY,
    network_id  bigint NOT NULL REFERENCES store_network (id),
    first_name  text NOT NULL CHECK (length(first_name) BETWEEN 1 AND 100),
    last_name   text NOT NULL CHECK (length(last_name) BETWEEN 1 AND 100),
    mobile      char(11) NOT NULL CHECK (mobile ~ '^09[0-9]{9}$'),
    birth_date  date,
    gender      text NOT NULL DEFAULT 'unspecified'
                CHECK (gender IN ('female', 'male', 'unspecified')),
    city        text NOT NULL DEFAULT '',
    occupation  text NOT NULL DEFAULT '',
    tags        text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (network_id, mobile)
);

-- A club card. The PAN itself is never stored: a keyed hash finds the card, and the BIN and
-- last four digits are kept for display.
CREATE TABLE card (
    id          bigserial PRIMARY KEY,
    network_id  bigint NOT NULL REFERENCES store_network (id),
    member_id   bigint NOT NULL REFERENCES member (id),
    pan_hash    bytea NOT NULL UNIQUE CHECK (length(pan_hash) = 32),
    pan_bin     char(6) NOT NULL CHECK (pan_bin ~ '^[0-9]{6}$'),
    pan_last4   char(4) NOT NULL CHECK (pan_last4 ~ '^[0-9]{4}$'),
    expiry      char(4) NOT NULL CHECK (expiry ~ '^[0-9]{2}(0[1-9]|1[0-2])$'),  -- YYMM
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked', 'expired')),
    tier        text NOT NULL DEFAULT 'bronze' CHECK (tier IN ('bronze', 'silver', 'gold')),
    replaces_id bigint REFERENCES card (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX card_member_idx ON card (member_id);

-- A member's Shetab bank card, linked so that bank-card purchases earn rewards.
CREATE TABLE bank_card (
    id          bigserial PRIMARY KEY,
    member_id   bigint NOT NULL REFERENCES member (id),
    pan_hash    bytea NOT NULL UNIQUE CHECK (length(pan_hash) = 32),
    pan_bin     char(6) NOT NULL CHECK (pan_bin ~ '^[0-9]{6}$'),
    pan_last4   char(4) NOT NULL CHECK (pan_last4 ~ '^[0-9]{4}$'),
    linked_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bank_card_member_idx ON bank_card (member_id);
