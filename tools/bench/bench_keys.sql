-- The benchmark producers' synthetic keys as rows (apikeyd stores usage of
-- known keys only): key k has id bench_uuid(k) (k little-endian in bytes
-- 0-3) and belongs to org bench_uuid(k / 10). Run with psql -v keys=N.
CREATE FUNCTION pg_temp.bench_uuid(n int) RETURNS uuid LANGUAGE sql AS $$
  SELECT (lpad(to_hex(n & 255), 2, '0') || lpad(to_hex((n >> 8) & 255), 2, '0') ||
          lpad(to_hex((n >> 16) & 255), 2, '0') || lpad(to_hex((n >> 24) & 255), 2, '0') ||
          '000040008000000000000000')::uuid $$;
INSERT INTO orgs (id, name)
  SELECT pg_temp.bench_uuid(o), 'bench' FROM generate_series(0, (:keys - 1) / 10) o;
INSERT INTO api_keys (id, org_id, name, prefix, hint, key_hash)
  SELECT pg_temp.bench_uuid(k), pg_temp.bench_uuid(k / 10), 'bench', 'ak', 'ak_bnch', sha256(int4send(k))
    FROM generate_series(0, :keys - 1) k;
