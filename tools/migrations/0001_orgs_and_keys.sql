-- Organisations and their API keys. A key is stored only as SHA-256(key).

CREATE TABLE orgs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (octet_length(name) BETWEEN 1 AND 100),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id         uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name           text NOT NULL CHECK (octet_length(name) BETWEEN 1 AND 100),
    prefix         text NOT NULL CHECK (prefix ~ '^[a-z0-9]{1,8}$'),
    hint           text NOT NULL,
    key_hash       bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    -- At most 8 scopes, each [a-z0-9][a-z0-9:._-]{0,63}, no NULLs (the
    -- same rule apikeyctl enforces).
    scopes         text[] NOT NULL DEFAULT '{}'
                   CHECK (cardinality(scopes) <= 8
                          AND coalesce(array_ndims(scopes), 1) = 1
                          AND array_position(scopes, NULL) IS NULL
                          AND array_to_string(scopes, ',') ~
                              '^([a-z0-9][a-z0-9:._-]{0,63}(,[a-z0-9][a-z0-9:._-]{0,63})*)?$'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    revoked_at     timestamptz,
    rotated_from   uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    last_used_at   timestamptz,
    last_used_ip   inet,
    request_count  bigint NOT NULL DEFAULT 0
);

CREATE INDEX api_keys_org_id_idx ON api_keys (org_id);
-- Backs ON DELETE SET NULL of rotated_from (deleting an org's keys).
CREATE INDEX api_keys_rotated_from_idx ON api_keys (rotated_from)
    WHERE rotated_from IS NOT NULL;

-- apikeyd LISTENs on this channel and republishes the key named in the
-- payload. Only columns the key table carries fire it, so the ingest's
-- last_used/request_count updates do not.
CREATE FUNCTION api_keys_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('apikey_keys', OLD.id::text);
    ELSE
        PERFORM pg_notify('apikey_keys', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_notify_ins_del
    AFTER INSERT OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify();

CREATE TRIGGER api_keys_notify_upd
    AFTER UPDATE OF org_id, name, key_hash, scopes, expires_at, revoked_at
    ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify();
