// extern "C" glue between the nginx shim and the C++ core. Each entry point
// is noexcept; the core's reader side does not throw, and what could
// (allocation) is nothrow or caught.

#include "apikey_glue.h"
#include "apikey_glue_errors.h"

#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>

#include "key_format.h"
#include "key_hash.h"
#include "key_memo.h"
#include "key_redact.h"
#include "key_table.h"
#include "usage_record.h"
#include "uuid.h"

namespace {

// What a remembered key's last lookup gave, beside its memo entry (same
// index): reused while the key's table slot is unchanged.
struct CachedVerdict {
    apikey_verdict_t verdict;
    std::int64_t revoked_at_us;
    // The earlier of the revocation and expiry times that are set
    // (INT64_MAX if neither is): before it the key is valid, one
    // comparison for the usual key (see judge_remembered()).
    std::int64_t ok_until_us;
};

}  // namespace

struct apikey_table_s {
    // Replaced only by a successful attach, so a worker keeps serving from
    // the last good table while apikeyd is down or mid-swap.
    std::unique_ptr<apikey::KeyTableReader> reader;
    // SHA-256 of the keys this worker saw lately (never the keys), and
    // where in the table each was found.
    apikey::KeyHashMemo memo;
    std::unique_ptr<CachedVerdict[]> cached;  // KeyHashMemo::kEntries
    // The probe of the key verify_in_table() is called for: set just
    // before the call, so that apikey_verify() keeps its own in registers.
    apikey::KeyHashMemo::Probe probe;
};

namespace {

apikey_result_e judge(std::int64_t revoked_at_us, std::int64_t expires_at_us,
                      std::int64_t now_us) noexcept {
    if (revoked_at_us != 0 && revoked_at_us <= now_us) {
        return APIKEY_REVOKED;
    }
    if (expires_at_us != 0 && expires_at_us <= now_us) {
        return APIKEY_EXPIRED;
    }
    return APIKEY_OK;
}

std::int64_t ok_until(std::int64_t revoked_at_us,
                      std::int64_t expires_at_us) noexcept {
    std::int64_t until = std::numeric_limits<std::int64_t>::max();
    if (revoked_at_us != 0) {
        until = revoked_at_us;
    }
    if (expires_at_us != 0 && expires_at_us < until) {
        until = expires_at_us;
    }
    return until;
}

// judge() of a remembered key's times: valid before ok_until_us; from
// then on one of the two times has come, the revocation first.
apikey_result_e judge_remembered(const CachedVerdict& c,
                                 std::int64_t now_us) noexcept {
    if (now_us < c.ok_until_us) {
        return APIKEY_OK;
    }
    return c.revoked_at_us != 0 && c.revoked_at_us <= now_us
               ? APIKEY_REVOKED
               : APIKEY_EXPIRED;
}

void fill_verdict(const apikey::KeyInfo& info,
                  apikey_verdict_t* verdict) noexcept {
    std::memcpy(verdict->key_id, info.key_id.data(), 16);
    std::memcpy(verdict->org_id, info.org_id.data(), 16);
    // only what lookup_brief() copied
    verdict->scope_count =
        info.scope_count <= APIKEY_MAX_SCOPES ? info.scope_count : 0;
    for (unsigned i = 0; i < verdict->scope_count; i++) {
        verdict->scope_hashes[i] = info.scope_hashes[i];
    }
    verdict->name_len =
        info.name_len <= APIKEY_MAX_NAME_LEN ? info.name_len : 0;
    std::memcpy(verdict->name, info.name, verdict->name_len);
}

// A remembered verdict as the request reads it: the fixed fields, the
// scope hashes if any, the name in a short block when it fits (the usual
// name); fixed sizes, so no memcpy call. Bytes past scope_count and
// name_len are left as they were: nothing reads them.
inline constexpr std::size_t kShortName = 32;
static_assert(offsetof(apikey_verdict_t, scope_hashes) == 48 &&
              offsetof(apikey_verdict_t, name) + kShortName <=
                  sizeof(apikey_verdict_t));

void copy_verdict(const apikey_verdict_t& from,
                  apikey_verdict_t* to) noexcept {
    std::memcpy(to, &from, offsetof(apikey_verdict_t, scope_hashes));
    if (from.scope_count != 0) {
        std::memcpy(to->scope_hashes, from.scope_hashes,
                    sizeof from.scope_hashes);
    }
    if (from.name_len <= kShortName) {
        std::memcpy(to->name, from.name, kShortName);
    } else {
        std::memcpy(to->name, from.name, sizeof from.name);
    }
}

// apikey_verify() without a reusable verdict: the format check and
// SHA-256 unless the key is remembered, then the table lookup. Out of line
// so that the common path sets up no frame for it.
__attribute__((noinline)) apikey_result_e verify_in_table(
    apikey_table_t* table, std::string_view text,
    apikey::KeyHashMemo::Remembered* known, std::int64_t now_us,
    apikey_verdict_t* verdict) noexcept {
    const apikey::KeyHashMemo::Probe& probe = table->probe;
    if (known == nullptr && !apikey::key_is_well_formed(text)) {
        return verdict->result = APIKEY_MALFORMED;
    }
    const apikey::KeyTableReader* reader = table->reader.get();
    if (reader == nullptr || !reader->ready()) {
        return verdict->result = APIKEY_UNAVAILABLE;
    }

    apikey::KeyHash computed;
    if (known == nullptr && !apikey::sha256_key(text, &computed)) {
        return verdict->result = APIKEY_UNAVAILABLE;
    }
    const apikey::KeyHash& hash = known != nullptr ? known->hash : computed;

    apikey::KeyInfo info;
    apikey::SlotMark mark;
    switch (reader->lookup_brief(hash, &info, &mark)) {
    case apikey::LookupResult::kFound:
        break;
    case apikey::LookupResult::kAbsent:
        return verdict->result = APIKEY_UNKNOWN;
    case apikey::LookupResult::kBusy:
        // a slot on the way stayed locked mid-update: fail closed
        return verdict->result = APIKEY_UNAVAILABLE;
    }
    if (known == nullptr) {
        // Only keys the table knows: unknown keys cannot evict real ones.
        known = table->memo.remember(probe, hash);
    }

    fill_verdict(info, verdict);
    verdict->result = judge(info.revoked_at_us, info.expires_at_us, now_us);

    if (known != nullptr) {
        CachedVerdict& c = table->cached[probe.index];
        c.verdict = *verdict;
        c.revoked_at_us = info.revoked_at_us;
        c.ok_until_us = ok_until(info.revoked_at_us, info.expires_at_us);
        known->slot = mark;
    }
    return verdict->result;
}


}  // namespace

static_assert(APIKEY_MAX_SCOPES == apikey::kMaxScopes);
static_assert(APIKEY_MAX_NAME_LEN == apikey::kMaxNameLen);
static_assert(APIKEY_UUID_TEXT_LEN == apikey::kUuidTextLen);

extern "C" {

apikey_table_t* apikey_table_new(void) noexcept {
    std::unique_ptr<apikey_table_s> table(new (std::nothrow) apikey_table_s());
    if (table == nullptr) {
        return nullptr;
    }
    table->cached.reset(new (std::nothrow)
                            CachedVerdict[apikey::KeyHashMemo::kEntries]);
    if (table->cached == nullptr) {
        return nullptr;
    }
    return table.release();
}

void apikey_table_free(apikey_table_t* table) noexcept { delete table; }

int apikey_table_attach(apikey_table_t* table, const char* path, char* err,
                        size_t err_len) noexcept {
    try {
        auto fresh = std::make_unique<apikey::KeyTableReader>();
        fresh->set_busy_wait_ns(apikey::kEventLoopSlotWaitNs);
        std::string why;
        apikey::SegmentStatus s = fresh->attach(path, &why);
        if (s != apikey::SegmentStatus::kOk) {
            if (s == apikey::SegmentStatus::kUntrusted) {
                // Fail closed: whoever could plant this file could also
                // have changed the one still mapped.
                table->reader.reset();
                table->memo.forget_slots();
            }
            apikey::copy_error(why, err, err_len);
            return static_cast<int>(s);
        }
        table->reader = std::move(fresh);
        // the memo's slot marks named slots of the old mapping
        table->memo.forget_slots();
        return 0;
    } catch (...) {
        apikey::copy_error("out of memory", err, err_len);
        return -1;
    }
}

int apikey_table_needs_attach(const apikey_table_t* table) noexcept {
    return table->reader == nullptr || table->reader->superseded();
}

int apikey_table_ready(const apikey_table_t* table) noexcept {
    return table->reader != nullptr && table->reader->ready();
}

apikey_result_e apikey_verify(apikey_table_t* table,
                              const unsigned char* key, size_t len,
                              int64_t now_us,
                              apikey_verdict_t* verdict) noexcept {
    std::string_view text(reinterpret_cast<const char*>(key), len);

    if (table == nullptr) {
        return verdict->result = apikey::key_is_well_formed(text)
                                     ? APIKEY_UNAVAILABLE
                                     : APIKEY_MALFORMED;
    }

    // A remembered key was well-formed and has its SHA-256 at hand.
    apikey::KeyHashMemo::Probe probe;
    apikey::KeyHashMemo::Remembered* known = table->memo.find(text, &probe);
    const apikey::KeyTableReader* reader = table->reader.get();

    // A slot mark stands for a ready table: it was taken on one (see
    // verify_in_table()), apikeyd never clears a table's ready flag, and
    // another mapping forgets every mark (apikey_table_attach()).
    if (known != nullptr && reader != nullptr &&
        reader->unchanged(known->slot)) {
        // The slot is as it was read: its verdict stands, times aside.
        const CachedVerdict& c = table->cached[probe.index];
        copy_verdict(c.verdict, verdict);
        return verdict->result = judge_remembered(c, now_us);
    }
    table->probe = probe;
    return verify_in_table(table, text, known, now_us, verdict);
}

uint64_t apikey_scope_hash(const unsigned char* scope, size_t len) noexcept {
    return apikey::scope_hash(
        std::string_view(reinterpret_cast<const char*>(scope), len));
}

int apikey_scope_is_valid(const unsigned char* scope, size_t len) noexcept {
    return apikey::scope_is_valid(
               std::string_view(reinterpret_cast<const char*>(scope), len))
               ? 1
               : 0;
}

int apikey_verdict_has_scopes(const apikey_verdict_t* verdict,
                              const uint64_t* required, size_t n) noexcept {
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (unsigned j = 0; j < verdict->scope_count; j++) {
            if (verdict->scope_hashes[j] == required[i]) {
                found = true;
                break;
            }
        }
        if (!found) {
            return 0;
        }
    }
    return 1;
}

void apikey_uuid_format(const unsigned char id[16],
                        unsigned char* out) noexcept {
    apikey::Uuid uuid;
    std::memcpy(uuid.data(), id, 16);
    apikey::uuid_format(uuid, reinterpret_cast<char*>(out));
}

const char* apikey_result_name(apikey_result_e result) noexcept {
    return apikey::auth_result_name(static_cast<apikey::AuthResult>(result));
}

void apikey_redact_keys(unsigned char* buf, size_t len,
                        int truncated) noexcept {
    apikey::redact_keys(reinterpret_cast<char*>(buf), len, truncated != 0);
}

}  // extern "C"
