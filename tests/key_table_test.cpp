// One suite for shared/key_table: the writer, lock-free readers, seqlock
// retries, swaps and the file checks. Long because the unit is.
#include "key_table.h"
#include "scratch_dir.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace apikey {
namespace {

std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

KeyHash hash_of(std::uint64_t n) {
    KeyHash h{};
    for (std::size_t w = 0; w < 4; ++w) {
        const std::uint64_t v = splitmix64(n * 4 + w);
        std::memcpy(h.data() + w * 8, &v, 8);
    }
    return h;
}

// Same home slot (low bits of the first 8 bytes) for every `n`: a probe
// chain on demand.
KeyHash colliding_hash(std::uint64_t n) {
    KeyHash h = hash_of(n);
    const std::uint64_t home = 42;
    std::memcpy(h.data(), &home, 8);
    return h;
}

// Every field derives from `version`, so a mix of two versions (a torn
// read) cannot match what expected_info() rebuilds from the key_id.
KeyInfo info_for(const KeyHash& hash, std::uint64_t version) {
    KeyInfo info{};
    info.key_hash = hash;
    const std::uint64_t ids[4] = {version, ~version, version * 3, version + 1};
    std::memcpy(info.key_id.data(), &ids[0], 16);
    std::memcpy(info.org_id.data(), &ids[2], 16);
    info.expires_at_us = static_cast<std::int64_t>(version * 5);
    info.revoked_at_us = static_cast<std::int64_t>(version * 7);
    for (std::size_t i = 0; i < kMaxScopes; ++i) {
        info.scope_hashes[i] = version + i;
    }
    info.scope_count = static_cast<std::uint8_t>(version % (kMaxScopes + 1));
    info.name_len = static_cast<std::uint8_t>(version % (kMaxNameLen + 1));
    for (std::size_t i = 0; i < kMaxNameLen; ++i) {
        info.name[i] = static_cast<char>('a' + (version + i) % 26);
    }
    return info;
}

std::uint64_t version_of(const KeyInfo& info) {
    std::uint64_t v;
    std::memcpy(&v, info.key_id.data(), 8);
    return v;
}

bool same_bytes(const KeyInfo& a, const KeyInfo& b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}

class KeyTableTest : public ::testing::Test {
protected:
    void SetUp() override {
        const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
        path_ = scratch_.file(test->name());
        cleanup();
    }
    void TearDown() override { cleanup(); }
    void cleanup() {
        unlink(path_.c_str());
        unlink((path_ + ".tmp").c_str());
    }

    KeyTableWriter published(std::uint64_t capacity = 0) {
        KeyTableWriter w = KeyTableWriter::create(path_, capacity);
        w.publish();
        return w;
    }

    apikey::testing::ScratchDir scratch_;
    std::string path_;
};

TEST_F(KeyTableTest, InsertedEntryIsFoundWithAllItsFields) {
    KeyTableWriter w = published();
    const KeyInfo info = info_for(hash_of(1), 12345);
    ASSERT_TRUE(w.upsert(info));

    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    ASSERT_TRUE(r.lookup(hash_of(1), &out));
    EXPECT_TRUE(same_bytes(out, info));
    EXPECT_EQ(r.live_count(), 1u);
}

TEST_F(KeyTableTest, AbsentKeyIsNotFound) {
    KeyTableWriter w = published();
    ASSERT_TRUE(w.upsert(info_for(hash_of(1), 1)));
    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    EXPECT_FALSE(r.lookup(hash_of(2), &out));
}

TEST_F(KeyTableTest, UpsertOfAnExistingKeyReplacesIt) {
    KeyTableWriter w = published();
    ASSERT_TRUE(w.upsert(info_for(hash_of(1), 1)));
    ASSERT_TRUE(w.upsert(info_for(hash_of(1), 2)));
    EXPECT_EQ(w.live_count(), 1u);

    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    ASSERT_TRUE(r.lookup(hash_of(1), &out));
    EXPECT_EQ(version_of(out), 2u);
}

TEST_F(KeyTableTest, RemovedKeyIsGoneAndLeavesATombstone) {
    KeyTableWriter w = published();
    ASSERT_TRUE(w.upsert(info_for(hash_of(1), 1)));
    EXPECT_TRUE(w.remove(hash_of(1)));
    EXPECT_FALSE(w.remove(hash_of(1)));
    EXPECT_FALSE(w.remove(hash_of(2)));
    EXPECT_EQ(w.live_count(), 0u);
    EXPECT_EQ(w.tombstone_count(), 1u);

    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    EXPECT_FALSE(r.lookup(hash_of(1), &out));
}

TEST_F(KeyTableTest, LookupProbesPastTombstones) {
    KeyTableWriter w = published();
    for (std::uint64_t n = 0; n < 5; ++n) {
        ASSERT_TRUE(w.upsert(info_for(colliding_hash(n), n)));
    }
    ASSERT_TRUE(w.remove(colliding_hash(1)));
    ASSERT_TRUE(w.remove(colliding_hash(2)));

    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    for (std::uint64_t n : {0, 3, 4}) {
        ASSERT_TRUE(r.lookup(colliding_hash(n), &out)) << n;
        EXPECT_EQ(version_of(out), n);
    }
    EXPECT_FALSE(r.lookup(colliding_hash(1), &out));
    EXPECT_FALSE(r.lookup(colliding_hash(7), &out));
}

TEST_F(KeyTableTest, NewEntryReusesTheFirstTombstone) {
    KeyTableWriter w = published();
    ASSERT_TRUE(w.upsert(info_for(colliding_hash(0), 0)));
    ASSERT_TRUE(w.upsert(info_for(colliding_hash(1), 1)));
    ASSERT_TRUE(w.remove(colliding_hash(0)));
    ASSERT_EQ(w.tombstone_count(), 1u);

    ASSERT_TRUE(w.upsert(info_for(colliding_hash(2), 2)));
    EXPECT_EQ(w.tombstone_count(), 0u);
    EXPECT_EQ(w.live_count(), 2u);

    int live_in_chain = 0;
    w.for_each([&](const KeyInfo&) { ++live_in_chain; });
    EXPECT_EQ(live_in_chain, 2);
    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    EXPECT_TRUE(r.lookup(colliding_hash(1), &out));
    EXPECT_TRUE(r.lookup(colliding_hash(2), &out));
}

TEST_F(KeyTableTest, UpsertOfAKeyBehindATombstoneUpdatesInPlace) {
    KeyTableWriter w = published();
    ASSERT_TRUE(w.upsert(info_for(colliding_hash(0), 0)));
    ASSERT_TRUE(w.upsert(info_for(colliding_hash(1), 1)));
    ASSERT_TRUE(w.remove(colliding_hash(0)));
    ASSERT_TRUE(w.upsert(info_for(colliding_hash(1), 100)));
    EXPECT_EQ(w.live_count(), 1u);
    EXPECT_EQ(w.tombstone_count(), 1u);
}

TEST_F(KeyTableTest, FullTableRefusesNewEntriesButAcceptsUpdates) {
    KeyTableWriter w = published(kMinKeyTableCapacity);
    const std::uint64_t limit = kMinKeyTableCapacity * 7 / 10;
    for (std::uint64_t n = 0; n < limit; ++n) {
        ASSERT_TRUE(w.upsert(info_for(hash_of(n), n))) << n;
    }
    EXPECT_FALSE(w.upsert(info_for(hash_of(limit), limit)));
    EXPECT_EQ(w.live_count(), limit);
    EXPECT_TRUE(w.upsert(info_for(hash_of(0), 999)));

    // Tombstones count towards the load; reusing one does not add to it.
    ASSERT_TRUE(w.remove(hash_of(1)));
    EXPECT_FALSE(w.upsert(info_for(hash_of(limit), limit)));
    EXPECT_TRUE(w.upsert(info_for(hash_of(1), 1)));
    EXPECT_EQ(w.tombstone_count(), 0u);
    EXPECT_EQ(w.live_count(), limit);
}

TEST_F(KeyTableTest, CapacityIsRoundedUpToAPowerOfTwo) {
    EXPECT_EQ(KeyTableWriter::create(path_, 0).capacity(),
              kMinKeyTableCapacity);
    EXPECT_EQ(KeyTableWriter::create(path_, 5000).capacity(), 8192u);
    EXPECT_EQ(KeyTableWriter::create(path_, 8192).capacity(), 8192u);
    struct stat st;
    ASSERT_EQ(stat((path_ + ".tmp").c_str(), &st), 0);
    EXPECT_EQ(static_cast<std::size_t>(st.st_size), key_table_file_size(8192));
}

TEST_F(KeyTableTest, CapacityAboveTheLimitIsRefused) {
    // 2^32 entries is the most a table may hold.
    EXPECT_THROW(KeyTableWriter::create(path_, (1ULL << 32) + 1),
                 std::runtime_error);
    struct stat st;
    EXPECT_NE(stat((path_ + ".tmp").c_str(), &st), 0) << "no file was made";
}

TEST_F(KeyTableTest, CreateInAMissingDirectoryThrowsWithThePath) {
    const std::string path = scratch_.file("no-dir/keys");
    try {
        KeyTableWriter::create(path, 0);
        ADD_FAILURE() << "create() did not throw";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(scratch_.file("no-dir")),
                  std::string::npos)
            << e.what();
    }
}

TEST_F(KeyTableTest, AttachRefusesAFileTooSmallForAHeader) {
    std::ofstream(path_, std::ios::binary) << "keys";
    ASSERT_EQ(chmod(path_.c_str(), 0644), 0);
    KeyTableReader r;
    std::string error;
    EXPECT_EQ(r.attach(path_.c_str(), &error), SegmentStatus::kBadSize);
    EXPECT_NE(error.find("file too small for a header"), std::string::npos)
        << error;
}

TEST_F(KeyTableTest, PublishTwiceIsOnePublication) {
    KeyTableWriter w = published();
    ASSERT_TRUE(w.upsert(info_for(hash_of(1), 1)));
    struct stat first;
    ASSERT_EQ(stat(path_.c_str(), &first), 0);
    w.publish();  // nothing left to rename: a no-op, not an error
    struct stat again;
    ASSERT_EQ(stat(path_.c_str(), &again), 0);
    EXPECT_EQ(again.st_ino, first.st_ino);
    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    EXPECT_TRUE(r.lookup(hash_of(1), &out));
}

TEST_F(KeyTableTest, PublishOverADirectoryThrowsAndKeepsIt) {
    KeyTableWriter w = KeyTableWriter::create(path_, 0);
    ASSERT_EQ(mkdir(path_.c_str(), 0750), 0);
    const std::string inside = path_ + "/file";
    std::ofstream(inside) << "x";
    try {
        w.publish();
        ADD_FAILURE() << "publish() did not throw";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("rename("), std::string::npos)
            << e.what();
    }
    struct stat st;
    EXPECT_EQ(stat(inside.c_str(), &st), 0) << "the directory is untouched";
    unlink(inside.c_str());
    rmdir(path_.c_str());
}

TEST_F(KeyTableTest, GenerationAdvancesOnEveryChange) {
    KeyTableWriter w = published();
    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    std::uint64_t g = r.generation();
    ASSERT_TRUE(w.upsert(info_for(hash_of(1), 1)));
    EXPECT_GT(r.generation(), g);
    g = r.generation();
    ASSERT_TRUE(w.upsert(info_for(hash_of(1), 2)));
    EXPECT_GT(r.generation(), g);
    g = r.generation();
    ASSERT_TRUE(w.remove(hash_of(1)));
    EXPECT_GT(r.generation(), g);
}

TEST_F(KeyTableTest, ReadyAndSyncTimeAreVisibleToReaders) {
    KeyTableWriter w = published();
    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    EXPECT_FALSE(r.ready());
    EXPECT_EQ(r.synced_at_us(), 0);
    w.set_ready();
    w.mark_synced(1700000000000000);
    EXPECT_TRUE(r.ready());
    EXPECT_EQ(r.synced_at_us(), 1700000000000000);
}

TEST_F(KeyTableTest, UnpublishedTableIsInvisibleAtThePath) {
    KeyTableWriter w = KeyTableWriter::create(path_, 0);
    ASSERT_TRUE(w.upsert(info_for(hash_of(1), 1)));
    KeyTableReader r;
    EXPECT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kMissing);
    EXPECT_FALSE(r.attached());
    w.publish();
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    EXPECT_TRUE(r.lookup(hash_of(1), &out));
    EXPECT_NE(access((path_ + ".tmp").c_str(), F_OK), 0);
}

TEST_F(KeyTableTest, PublishedFileIsWorldReadableWhateverTheUmask) {
    const mode_t old_umask = umask(077);
    KeyTableWriter w = published();
    umask(old_umask);
    struct stat st;
    ASSERT_EQ(stat(path_.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0644u);
}

TEST_F(KeyTableTest, DetachedReaderFindsNothing) {
    KeyTableReader r;
    KeyInfo out{};
    EXPECT_FALSE(r.attached());
    EXPECT_FALSE(r.lookup(hash_of(1), &out));
    EXPECT_FALSE(r.ready());
    EXPECT_FALSE(r.superseded());
    EXPECT_EQ(r.generation(), 0u);
}

TEST_F(KeyTableTest, ScopesAndNameAreReadBack) {
    KeyInfo info = info_for(hash_of(1), 0);
    info.scope_count = 2;
    info.scope_hashes[0] = scope_hash("usage:read");
    info.scope_hashes[1] = scope_hash("billing");
    const std::string name = "ci deploy key";
    info.name_len = static_cast<std::uint8_t>(name.size());
    std::memcpy(info.name, name.data(), name.size());

    KeyTableWriter w = published();
    ASSERT_TRUE(w.upsert(info));
    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    ASSERT_TRUE(r.lookup(hash_of(1), &out));
    EXPECT_TRUE(out.has_scope(scope_hash("usage:read")));
    EXPECT_TRUE(out.has_scope(scope_hash("billing")));
    EXPECT_FALSE(out.has_scope(scope_hash("usage:write")));
    EXPECT_EQ(out.name_view(), name);
}

TEST_F(KeyTableTest, BriefLookupCopiesWhatARequestNeedsAndNothingElse) {
    KeyTableWriter w = published();
    for (std::uint8_t scopes : {0, 1, 3, 8}) {
        for (std::uint8_t name_len : {0, 1, 5, 6, 7, 14, 99, 100}) {
            const std::uint64_t n = scopes * 1000 + name_len;
            KeyInfo info = info_for(hash_of(n), n + 1);
            info.scope_count = scopes;
            info.name_len = name_len;
            ASSERT_TRUE(w.upsert(info));
        }
    }
    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    for (std::uint8_t scopes : {0, 1, 3, 8}) {
        for (std::uint8_t name_len : {0, 1, 5, 6, 7, 14, 99, 100}) {
            const std::uint64_t n = scopes * 1000 + name_len;
            KeyInfo full{};
            ASSERT_TRUE(r.lookup(hash_of(n), &full));
            KeyInfo brief;
            std::memset(&brief, 0xa5, sizeof brief);  // "not copied" marker
            ASSERT_EQ(r.lookup_brief(hash_of(n), &brief), LookupResult::kFound);
            EXPECT_EQ(brief.key_hash, full.key_hash);
            EXPECT_EQ(brief.key_id, full.key_id);
            EXPECT_EQ(brief.org_id, full.org_id);
            EXPECT_EQ(brief.expires_at_us, full.expires_at_us);
            EXPECT_EQ(brief.revoked_at_us, full.revoked_at_us);
            ASSERT_EQ(brief.scope_count, scopes);
            ASSERT_EQ(brief.name_len, name_len);
            for (std::size_t i = 0; i < scopes; ++i) {
                EXPECT_EQ(brief.scope_hashes[i], full.scope_hashes[i]);
            }
            EXPECT_EQ(brief.name_view(), full.name_view());
            if (scopes < kMaxScopes) {  // whole words beyond the count
                std::uint64_t marker;
                std::memset(&marker, 0xa5, sizeof marker);
                EXPECT_EQ(brief.scope_hashes[kMaxScopes - 1], marker);
            }
        }
    }
    KeyInfo out{};
    EXPECT_EQ(r.lookup_brief(hash_of(999999), &out), LookupResult::kAbsent);
}

// A worker reuses what it read from a slot while the slot's mark holds:
// every change of that key (revocation, expiry, rotation, removal) must
// break the mark, and changes of other keys must not.
TEST_F(KeyTableTest, SlotMarkHoldsUntilThatSlotChanges) {
    KeyTableWriter w = published();
    ASSERT_TRUE(w.upsert(info_for(hash_of(1), 1)));
    ASSERT_TRUE(w.upsert(info_for(hash_of(2), 2)));
    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);

    SlotMark none;
    EXPECT_FALSE(r.unchanged(none)) << "no mark never holds";
    KeyInfo out{};
    SlotMark mark;
    ASSERT_EQ(r.lookup_brief(hash_of(1), &out, &mark), LookupResult::kFound);
    EXPECT_LT(mark.index, r.capacity());
    EXPECT_EQ(mark.seq % 2, 0u);
    EXPECT_TRUE(r.unchanged(mark));
    SlotMark other;
    ASSERT_EQ(r.lookup_brief(hash_of(2), &out, &other), LookupResult::kFound);
    // the range is the mapping's slots: the last one (never written, so
    // at sequence 0) is in it, one past it is not
    const std::uint64_t last = r.capacity() - 1;
    ASSERT_NE(mark.index, last);
    ASSERT_NE(other.index, last);
    EXPECT_TRUE(r.unchanged(SlotMark{last, 0}));
    EXPECT_FALSE(r.unchanged(SlotMark{last + 1, 0}));
    SlotMark absent;
    EXPECT_EQ(r.lookup_brief(hash_of(3), &out, &absent),
              LookupResult::kAbsent);
    EXPECT_EQ(absent.index, SlotMark::kNone) << "only a found key is marked";

    // another key's change, a new key: the mark holds
    ASSERT_TRUE(w.upsert(info_for(hash_of(2), 20)));
    ASSERT_TRUE(w.upsert(info_for(hash_of(3), 3)));
    EXPECT_TRUE(r.unchanged(mark));
    EXPECT_FALSE(r.unchanged(other));

    // the key revoked (an upsert of its entry): broken, and a new look
    // marks the new version
    KeyInfo revoked = info_for(hash_of(1), 1);
    revoked.revoked_at_us = 1700000000000000;
    ASSERT_TRUE(w.upsert(revoked));
    EXPECT_FALSE(r.unchanged(mark));
    SlotMark again;
    ASSERT_EQ(r.lookup_brief(hash_of(1), &out, &again), LookupResult::kFound);
    EXPECT_EQ(out.revoked_at_us, revoked.revoked_at_us);
    EXPECT_EQ(again.index, mark.index);
    EXPECT_TRUE(r.unchanged(again));

    // removed: broken
    ASSERT_TRUE(w.remove(hash_of(1)));
    EXPECT_FALSE(r.unchanged(again));

    // a mark of another mapping is out of range for a detached reader
    r.detach();
    EXPECT_EQ(r.capacity(), 0u);
    EXPECT_FALSE(r.unchanged(other));
    EXPECT_FALSE(r.unchanged(SlotMark{0, 0}));
}

// A writer that died between the two sequence stores leaves its slot odd.
TEST_F(KeyTableTest, SlotStuckMidUpdateIsBusyWithinTheEventLoopBound) {
    KeyTableWriter w = published();
    ASSERT_TRUE(w.upsert(info_for(hash_of(1), 1)));
    ASSERT_TRUE(w.upsert(info_for(hash_of(2), 2)));
    {
        MappedFile map;
        ASSERT_EQ(map.open(path_.c_str(), true, nullptr), SegmentStatus::kOk);
        auto* slots = reinterpret_cast<KeyTableSlot*>(
            static_cast<char*>(map.data()) + kKeyTableHeaderSize);
        bool stuck = false;
        for (std::uint64_t i = 0; i < w.capacity() && !stuck; ++i) {
            if (slots[i].info.key_hash == hash_of(1)) {
                slots[i].seq.fetch_add(1);
                stuck = true;
            }
        }
        ASSERT_TRUE(stuck);
    }

    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    r.set_busy_wait_ns(kEventLoopSlotWaitNs);
    KeyInfo out{};
    EXPECT_EQ(r.lookup_brief(hash_of(2), &out), LookupResult::kFound);
    EXPECT_FALSE(r.lookup(hash_of(1), &out));

    // The median: one lookup may be preempted on a loaded machine.
    std::vector<std::int64_t> ns;
    for (int i = 0; i < 21; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        EXPECT_EQ(r.lookup_brief(hash_of(1), &out), LookupResult::kBusy);
        ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(
                         std::chrono::steady_clock::now() - t0)
                         .count());
    }
    std::sort(ns.begin(), ns.end());
    EXPECT_GE(ns.front(), kEventLoopSlotWaitNs) << "gave up without waiting";
    EXPECT_LT(ns[ns.size() / 2], 1000 * 1000) << "median wait in ns";
}

TEST_F(KeyTableTest, OutOfRangeCountsAreClampedByTheWriter) {
    KeyInfo info = info_for(hash_of(1), 0);
    info.scope_count = 200;
    info.name_len = 250;
    KeyTableWriter w = published();
    ASSERT_TRUE(w.upsert(info));
    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    ASSERT_TRUE(r.lookup(hash_of(1), &out));
    EXPECT_EQ(out.scope_count, kMaxScopes);
    EXPECT_EQ(out.name_len, kMaxNameLen);
}

TEST_F(KeyTableTest, MillionKeysAreAllFound) {
    constexpr std::uint64_t kKeys = 1000000;
    KeyTableWriter w = published(1ULL << 21);
    ASSERT_EQ(w.capacity(), 1ULL << 21);
    for (std::uint64_t n = 0; n < kKeys; ++n) {
        ASSERT_TRUE(w.upsert(info_for(hash_of(n), n))) << n;
    }
    w.set_ready();

    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    EXPECT_EQ(r.live_count(), kKeys);
    KeyInfo out{};
    std::uint64_t found = 0;
    for (std::uint64_t n = 0; n < kKeys; ++n) {
        if (r.lookup(hash_of(n), &out) && version_of(out) == n) {
            ++found;
        }
    }
    EXPECT_EQ(found, kKeys);
    std::uint64_t false_hits = 0;
    for (std::uint64_t n = kKeys; n < kKeys + 100000; ++n) {
        false_hits += r.lookup(hash_of(n), &out);
    }
    EXPECT_EQ(false_hits, 0u);
}

// One writer churns entries (insert, update, remove, re-insert) whose
// fields all derive from a version counter, while two readers look them
// up. A torn read would show up as fields from two versions.
TEST_F(KeyTableTest, ConcurrentReadersNeverSeeATornEntry) {
    constexpr std::uint64_t kEntries = 64;
    constexpr std::uint64_t kStable = 8;  // updated, never removed
    // Half the entries share a home slot: long chains through tombstones.
    auto key = [](std::uint64_t e) {
        return e % 2 ? colliding_hash(e) : hash_of(e);
    };

    KeyTableWriter w = published();
    for (std::uint64_t e = 0; e < kEntries; ++e) {
        ASSERT_TRUE(w.upsert(info_for(key(e), e + 1)));
    }

    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> writes{0};
    std::thread writer([&] {
        std::mt19937_64 rng(1);
        std::vector<bool> present(kEntries, true);
        std::uint64_t version = kEntries + 1;
        while (!stop.load(std::memory_order_relaxed)) {
            const std::uint64_t e = rng() % kEntries;
            if (e >= kStable && present[e] && rng() % 4 == 0) {
                w.remove(key(e));
                present[e] = false;
            } else if (w.upsert(info_for(key(e), ++version))) {
                present[e] = true;
            } else {
                ADD_FAILURE() << "table unexpectedly full";
                return;
            }
            writes.fetch_add(1, std::memory_order_relaxed);
        }
    });

    std::atomic<std::uint64_t> torn{0};
    std::atomic<std::uint64_t> stable_misses{0};
    std::atomic<std::uint64_t> hits{0};
    auto reader = [&](std::uint64_t seed) {
        KeyTableReader r;
        if (r.attach(path_.c_str(), nullptr) != SegmentStatus::kOk) {
            ADD_FAILURE() << "attach failed";
            return;
        }
        std::mt19937_64 rng(seed);
        KeyInfo out{};
        std::uint64_t local_hits = 0;
        while (!stop.load(std::memory_order_relaxed)) {
            const std::uint64_t e = rng() % kEntries;
            if (!r.lookup(key(e), &out)) {
                stable_misses += e < kStable;
                continue;
            }
            ++local_hits;
            if (!same_bytes(out, info_for(key(e), version_of(out)))) {
                torn.fetch_add(1);
            }
        }
        hits += local_hits;
    };
    std::thread r1(reader, 2);
    std::thread r2(reader, 3);

    std::this_thread::sleep_for(std::chrono::seconds(1));
    stop = true;
    writer.join();
    r1.join();
    r2.join();

    EXPECT_EQ(torn.load(), 0u);
    EXPECT_EQ(stable_misses.load(), 0u);
    EXPECT_GT(writes.load(), 1000u);
    EXPECT_GT(hits.load(), 1000u);
}

// --- attach validation ----------------------------------------------------

class KeyTableAttachTest : public KeyTableTest {
protected:
    // Publishes a valid table, then lets `edit` damage its header.
    template <typename Edit>
    void publish_and_edit(Edit edit) {
        { KeyTableWriter w = published(); }
        MappedFile map;
        ASSERT_EQ(map.open(path_.c_str(), true, nullptr), SegmentStatus::kOk);
        edit(static_cast<KeyTableHeader*>(map.data()));
    }

    SegmentStatus attach(std::string* error = nullptr) {
        KeyTableReader r;
        const SegmentStatus s = r.attach(path_.c_str(), error);
        EXPECT_EQ(r.attached(), s == SegmentStatus::kOk);
        return s;
    }
};

TEST_F(KeyTableAttachTest, MissingFileIsReportedAsMissing) {
    std::string error;
    EXPECT_EQ(attach(&error), SegmentStatus::kMissing);
    EXPECT_NE(error.find(path_), std::string::npos) << error;
}

TEST_F(KeyTableAttachTest, ForeignFileIsRejectedAsBadMagic) {
    std::ofstream(path_) << std::string(8192, 'x');
    std::string error;
    EXPECT_EQ(attach(&error), SegmentStatus::kBadMagic);
    EXPECT_NE(error.find(path_), std::string::npos) << error;
}

TEST_F(KeyTableAttachTest, OtherLayoutVersionIsRejected) {
    publish_and_edit([](KeyTableHeader* h) { h->layout_version = 2; });
    EXPECT_EQ(attach(), SegmentStatus::kBadVersion);
}

TEST_F(KeyTableAttachTest, OtherSlotSizeIsRejected) {
    publish_and_edit([](KeyTableHeader* h) { h->slot_size = 128; });
    EXPECT_EQ(attach(), SegmentStatus::kBadVersion);
}

TEST_F(KeyTableAttachTest, OtherHeaderSizeIsRejected) {
    publish_and_edit([](KeyTableHeader* h) { h->header_size = 8192; });
    EXPECT_EQ(attach(), SegmentStatus::kBadVersion);
}

TEST_F(KeyTableAttachTest, CapacityThatIsNotAPowerOfTwoIsRejected) {
    publish_and_edit([](KeyTableHeader* h) { h->capacity -= 1; });
    EXPECT_EQ(attach(), SegmentStatus::kBadSize);
}

TEST_F(KeyTableAttachTest, CapacityLargerThanTheFileIsRejected) {
    publish_and_edit([](KeyTableHeader* h) { h->capacity <<= 1; });
    EXPECT_EQ(attach(), SegmentStatus::kBadSize);
}

TEST_F(KeyTableAttachTest, AbsurdCapacityIsRejected) {
    publish_and_edit([](KeyTableHeader* h) { h->capacity = 1ULL << 63; });
    EXPECT_EQ(attach(), SegmentStatus::kBadSize);
}

TEST_F(KeyTableAttachTest, TruncatedFileIsRejected) {
    { KeyTableWriter w = published(); }
    ASSERT_EQ(truncate(path_.c_str(),
                       static_cast<off_t>(key_table_file_size(
                           kMinKeyTableCapacity) / 2)),
              0);
    EXPECT_EQ(attach(), SegmentStatus::kBadSize);
    ASSERT_EQ(truncate(path_.c_str(), 100), 0);
    EXPECT_EQ(attach(), SegmentStatus::kBadSize);
    ASSERT_EQ(truncate(path_.c_str(), 0), 0);
    EXPECT_EQ(attach(), SegmentStatus::kBadSize);
}

TEST_F(KeyTableAttachTest, FailedAttachLeavesTheReaderDetached) {
    { KeyTableWriter w = published(); }
    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    const std::string other = path_ + ".absent";
    EXPECT_EQ(r.attach(other.c_str(), nullptr), SegmentStatus::kMissing);
    EXPECT_FALSE(r.attached());
}

// --- generation swap --------------------------------------------------------

TEST_F(KeyTableTest, PublishSupersedesTheOldFileAndReattachSeesTheNewOne) {
    KeyTableWriter first = published();
    ASSERT_TRUE(first.upsert(info_for(hash_of(1), 1)));
    first.set_ready();

    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    ASSERT_TRUE(r.lookup(hash_of(1), &out));

    KeyTableWriter second = KeyTableWriter::create(path_, 8192);
    ASSERT_TRUE(second.upsert(info_for(hash_of(2), 2)));
    second.set_ready();
    EXPECT_FALSE(r.superseded()) << "superseded before the new file is in place";
    second.publish();

    ASSERT_TRUE(r.superseded());
    // The old mapping stays valid until the reader moves on.
    EXPECT_TRUE(r.lookup(hash_of(1), &out));

    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    EXPECT_FALSE(r.superseded());
    EXPECT_TRUE(r.ready());
    EXPECT_TRUE(r.lookup(hash_of(2), &out));
    EXPECT_FALSE(r.lookup(hash_of(1), &out));

    // The writer keeps working on the published file.
    ASSERT_TRUE(second.upsert(info_for(hash_of(3), 3)));
    EXPECT_TRUE(r.lookup(hash_of(3), &out));
}

TEST_F(KeyTableTest, PublishOverAForeignFileReplacesIt) {
    std::ofstream(path_) << "not a key table";
    KeyTableWriter w = published();
    KeyTableReader r;
    EXPECT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
}

TEST_F(KeyTableTest, WalkingTheTableYieldsEachLiveEntryOnce) {
    KeyTableWriter w = published();
    for (std::uint64_t n = 1; n <= 100; ++n) {
        ASSERT_TRUE(w.upsert(info_for(hash_of(n), n)));
    }
    ASSERT_TRUE(w.remove(hash_of(7)));  // a tombstone is not an entry

    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    ASSERT_EQ(r.capacity(), w.capacity());
    std::vector<int> seen(101, 0);
    KeyInfo out{};
    for (std::uint64_t i = 0; i < r.capacity(); ++i) {
        if (r.entry_at(i, &out)) {
            const std::uint64_t v = version_of(out);
            ASSERT_TRUE(v >= 1 && v <= 100);
            EXPECT_TRUE(same_bytes(out, info_for(hash_of(v), v)));
            seen[v]++;
        }
    }
    for (std::uint64_t n = 1; n <= 100; ++n) {
        EXPECT_EQ(seen[n], n == 7 ? 0 : 1) << "entry " << n;
    }
    EXPECT_FALSE(r.entry_at(r.capacity(), &out));
}

// apikeyd walks the table to compare it with the database: a slot a dead
// writer left odd is skipped after the bounded retries, not waited on.
TEST_F(KeyTableTest, WalkingSkipsASlotStuckMidUpdate) {
    KeyTableWriter w = published();
    ASSERT_TRUE(w.upsert(info_for(hash_of(1), 1)));
    ASSERT_TRUE(w.upsert(info_for(hash_of(2), 2)));
    std::uint64_t stuck = w.capacity();
    {
        MappedFile map;
        ASSERT_EQ(map.open(path_.c_str(), true, nullptr), SegmentStatus::kOk);
        auto* slots = reinterpret_cast<KeyTableSlot*>(
            static_cast<char*>(map.data()) + kKeyTableHeaderSize);
        for (std::uint64_t i = 0; i < w.capacity(); ++i) {
            if (slots[i].info.key_hash == hash_of(1)) {
                slots[i].seq.fetch_add(1);
                stuck = i;
                break;
            }
        }
    }
    ASSERT_LT(stuck, w.capacity());

    KeyTableReader r;
    ASSERT_EQ(r.attach(path_.c_str(), nullptr), SegmentStatus::kOk);
    KeyInfo out{};
    EXPECT_FALSE(r.entry_at(stuck, &out));
    std::vector<std::uint64_t> seen;
    for (std::uint64_t i = 0; i < r.capacity(); ++i) {
        if (r.entry_at(i, &out)) seen.push_back(version_of(out));
    }
    EXPECT_EQ(seen, std::vector<std::uint64_t>{2});
}

TEST_F(KeyTableTest, DetachedReaderHasNoEntries) {
    KeyTableReader r;
    KeyInfo out{};
    EXPECT_EQ(r.capacity(), 0u);
    EXPECT_FALSE(r.entry_at(0, &out));
}

}  // namespace
}  // namespace apikey
