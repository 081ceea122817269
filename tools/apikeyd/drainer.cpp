// The drain loop (drainer.h says what it promises). Over 600 lines, one
// concern: reading the rings, admitting records, storing or spooling them,
// calling the aggregate collector, and the ring and offset housekeeping
// that loop owns.
#include "drainer.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "aggregate_collector.h"
#include "log.h"
#include "partitions.h"
#include "pg.h"
#include "ring_owners.h"
#include "spool.h"
#include "time_util.h"
#include "usage_store.h"

namespace apikey {
namespace {

// Larger batches amortise the rollup upserts (one row per key x endpoint x
// method per batch) and the commit's fsync; 16k records are ~4.5 MiB.
constexpr std::size_t kMaxBatch = 16384;
constexpr int kIdleSleepMs = 20;
// The longest a spool replay holds up reading the rings and aggregates.
constexpr std::int64_t kReplayTurnUs = 200000;
constexpr std::int64_t kAttachRetryUs = 1000000;
constexpr std::int64_t kMaintenanceEveryUs = 3600LL * 1000000;
constexpr std::int64_t kOwnerCheckEveryUs = 1000000;
constexpr std::int64_t kNodeRetryUs = 10 * 1000000LL;
constexpr std::int64_t kNodeClaimWaitUs = 5 * 1000000LL;
constexpr std::int64_t kRejectLogEveryUs = 60 * 1000000LL;

Uuid uuid_of(const std::uint8_t (&bytes)[16]) {
    Uuid id;
    std::memcpy(id.data(), bytes, id.size());
    return id;
}

ino_t inode_of(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// Segments nginx replaced (a layout change) while their rings may still
// hold records: PATH.old.<created_at_us>, left for us to drain and delete.
std::vector<std::string> kept_old_segments(const std::string& path) {
    std::vector<std::string> found;
    std::size_t slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
    std::string prefix = (slash == std::string::npos ? path
                                                      : path.substr(slash + 1)) +
                         kUsageOldSuffix;
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) return found;
    while (dirent* e = readdir(d)) {
        if (std::string(e->d_name).rfind(prefix, 0) == 0) {
            found.push_back(dir + "/" + e->d_name);
        }
    }
    closedir(d);
    return found;
}

}  // namespace

struct Drainer::Source {
    std::string path;
    ino_t inode = 0;
    UsageSegment segment;
    // A ring owner was seen alive in our PID namespace: owner pids of this
    // segment can be checked here (ring_owners.h).
    bool owners_here = false;
    bool owners_warned = false;
    std::int64_t next_owner_check_us = 0;
    std::map<std::uint32_t, std::int32_t> kept;  // slot -> pid, nested
    std::int64_t next_nested_scan_us = 0;
};

Drainer::Drainer(const DaemonConfig& config, DrainerStats* stats,
                 KeyIndex* keys)
    : config_(config),
      stats_(stats),
      keys_(keys),
      store_(std::make_unique<UsageStore>(config)),
      spool_(std::make_unique<Spool>(
          config.spool_dir,
          static_cast<std::uint64_t>(config.spool_max_mb) << 20,
          [](const std::string& m) { log_warn("spool: " + m); })),
      aggregates_(std::make_unique<AggregateCollector>(store_.get(), keys,
                                                       stats)) {
    stats_->spool_bytes = spool_->bytes();
}

Drainer::~Drainer() = default;

bool Drainer::claim_node() {
    const std::int64_t give_up = now_us() + kNodeClaimWaitUs;
    while (true) {
        try {
            store_->connect();
            return true;
        } catch (const NodeInUse& e) {
            // A previous apikeyd of this node may just have exited and its
            // session not ended yet.
            if (now_us() >= give_up) {
                log_error(std::string("apikeyd: ") + e.what());
                return false;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(250));
        } catch (const std::exception& e) {
            log_warn(std::string("drainer: PostgreSQL not reachable (") +
                     e.what() + "); the node lock is taken on connecting");
            return true;
        }
    }
}

void Drainer::run(const std::atomic<bool>& stop) {
    while (true) {
        bool stopping = stop.load();
        std::size_t n = 0;
        try {
            attach_segments();
            if (!node_in_use_) {
                maintain_partitions();
                prune_offsets();
            }
            n = drain_once();
        } catch (const std::exception& e) {
            log_error(std::string("drainer: ") + e.what());
        }
        if (stopping) break;  // one last pass after the stop request
        if (n < kMaxBatch && !replay_pending_) {
            std::this_thread::sleep_for(std::chrono::milliseconds(kIdleSleepMs));
        }
    }
}

// Maps the segment at --usage, and the newer one when nginx replaced it (a
// layout change); older segments stay mapped until their rings are empty
// and free, so records of workers still running on them are not lost.
void Drainer::attach_segments() {
    std::int64_t now = now_us();
    std::lock_guard<std::mutex> lock(sources_mutex_);

    bool need_new = sources_.empty();
    if (!need_new) {
        Source& newest = *sources_.back();
        need_new = newest.segment.header().superseded.load() != 0 ||
                   inode_of(config_.usage_path) != newest.inode;
    }
    if (need_new && now >= next_attach_us_) {
        next_attach_us_ = now + kAttachRetryUs;
        for (const std::string& old : kept_old_segments(config_.usage_path)) {
            attach_one(old, /*newest=*/false);
        }
        attach_one(config_.usage_path, /*newest=*/true);
    }

    // Drop old segments whose rings are all free (their workers are gone
    // and everything they wrote is committed), and delete kept files.
    for (std::size_t i = 0; i + 1 < sources_.size();) {
        Source& src = *sources_[i];
        bool all_free = true;
        for (std::uint32_t s = 0; s < src.segment.slot_count(); ++s) {
            if (src.segment.slot(s).state.load() !=
                static_cast<std::uint32_t>(SlotOwnership::kFree)) {
                all_free = false;
                break;
            }
        }
        if (!all_free) {
            ++i;
            continue;
        }
        std::string kept = config_.usage_path + kUsageOldSuffix +
                           std::to_string(src.segment.header().created_at_us);
        if (inode_of(kept) == src.inode) unlink(kept.c_str());
        log_info("drainer: finished with replaced usage segment");
        aggregates_->forget(&src.segment);
        sources_.erase(sources_.begin() + static_cast<long>(i));
    }
    stats_->segment_attached = !sources_.empty();
}

// Maps one segment file unless it is already mapped (same inode).
void Drainer::attach_one(const std::string& path, bool newest) {
    ino_t inode = inode_of(path);
    if (inode == 0) return;
    for (const auto& s : sources_) {
        if (s->inode == inode) return;
    }
    auto src = std::make_unique<Source>();
    src->path = path;
    src->inode = inode;
    std::string why;
    SegmentStatus s = src->segment.attach(path.c_str(), &why);
    if (s != SegmentStatus::kOk || inode_of(path) != inode) {
        if (s != SegmentStatus::kMissing && s != SegmentStatus::kOk) {
            log_warn("drainer: usage segment not usable: " + why);
        }
        return;
    }
    log_info("drainer: draining usage segment " + path + " (" +
             std::to_string(src->segment.slot_count()) + " rings)");
    if (newest) {
        sources_.push_back(std::move(src));
    } else {
        sources_.insert(sources_.begin(), std::move(src));
    }
}

// After a restart, rings may still hold records that the previous run
// committed but did not get to consume: skip to the committed positions.
void Drainer::resume_from_database() {
    for (const SlotPosition& p : store_->committed_positions()) {
        resume_[{p.slot, p.generation}] = p.next_sequence;
    }
    for (auto& src : sources_) {
        UsageSegment& seg = src->segment;
        for (std::uint32_t s = 0; s < seg.slot_count(); ++s) {
            UsageSlot& slot = seg.slot(s);
            auto it = resume_.find({s, slot.generation.load()});
            if (it == resume_.end()) continue;
            std::uint64_t tail = slot.tail.load();
            std::uint64_t head = slot.head.load();
            if (it->second > tail && it->second <= head) {
                seg.commit(s, it->second);
            }
        }
    }
    resumed_ = true;
}

// The key publisher fills the index from PostgreSQL or, before that, from
// the table published before this start. Without either there is nothing
// to check records against: wait, leaving them in the rings.
bool Drainer::keys_known() {
    if (keys_->ready()) {
        if (waiting_logged_) log_info("drainer: keys known, draining");
        waiting_logged_ = false;
        stats_->waiting_for_keys = false;
        return true;
    }
    if (!waiting_logged_) {
        log_info("drainer: waiting for the first key load (none published "
                 "before) to check usage against; usage stays in the rings");
        waiting_logged_ = true;
    }
    stats_->waiting_for_keys = true;
    return false;
}

// While another apikeyd holds this node's lock, nothing is drained (its
// records would be taken for ours); the lock is tried again now and then.
bool Drainer::node_usable() {
    if (!node_in_use_) return true;
    std::int64_t now = now_us();
    if (now < next_node_retry_us_) return false;
    next_node_retry_us_ = now + kNodeRetryUs;
    try {
        store_->connect();
    } catch (const std::exception&) {
        return false;
    }
    node_in_use_ = false;
    stats_->node_in_use = false;
    log_info("drainer: node \"" + config_.node +
             "\" is ours again; draining");
    return true;
}

void Drainer::node_lost() {
    if (!node_in_use_) {
        log_error("drainer: node \"" + config_.node +
                  "\" is in use by another apikeyd connected to this "
                  "database; not draining until it stops (each host needs "
                  "its own --node)");
    }
    node_in_use_ = true;
    stats_->node_in_use = true;
    next_node_retry_us_ = now_us() + kNodeRetryUs;
}

std::size_t Drainer::drain_once() {
    replay_pending_ = false;
    if (!node_usable()) return 0;
    if (!resumed_ && !sources_.empty()) {
        try {
            resume_from_database();
        } catch (const NodeInUse&) {
            node_lost();
            return 0;
        } catch (const pg::Error&) {
            // Not now; commits still skip what is already committed.
        }
    }

    std::vector<UsageRecord> batch;
    std::vector<RingEnd> ends;
    std::size_t read = 0;
    const std::int64_t started = now_us();
    const bool reading = keys_known();
    if (reading) {
        for (auto& src : sources_) {
            collect(*src, &batch, &ends);
        }
        for (const RingEnd& end : ends) read += end.count;
        report_rejections(now_us());
    }

    if (!ends.empty() || !spool_->empty()) {
        if (!store_batch(batch)) return 0;  // node lost: leave the rings
    }
    stats_->drained += read;

    // Committed (to PostgreSQL or the spool): now the rings may move on.
    for (const RingEnd& end : ends) {
        end.source->segment.commit(end.slot, end.position);
    }
    if (reading && !collect_aggregates()) return read;  // node lost
    for (auto& src : sources_) {
        reap_slots(*src);
    }
    // Every ring was read up to its head (the batch had room), so every
    // record written before `started` is read, and every aggregate written
    // before the oldest buffer not read yet: keys removed more than a
    // grace period before both have nothing left to come.
    if (reading && read < kMaxBatch) {
        keys_->forget_removed_before(
            std::min(started, aggregates_->unread_since_us(started)) -
            kRemovedKeyGraceUs);
    }
    return read;
}

// Reads each ring from its tail. A record's identity is where it was read:
// this slot, the slot's current generation (every record between tail and
// head belongs to the current claim, as a slot is claimed again only once
// drained and freed by us) and its stream position (peek sets slot and
// position). So a record cannot pass for another ring's or skip ahead,
// hiding later ones as duplicates.
void Drainer::collect(Source& src, std::vector<UsageRecord>* batch,
                      std::vector<RingEnd>* ends) {
    UsageSegment& seg = src.segment;
    const std::int64_t now = now_us();
    std::size_t read = 0;
    for (const RingEnd& end : *ends) read += end.count;
    for (std::uint32_t s = 0; s < seg.slot_count(); ++s) {
        if (read >= kMaxBatch) return;
        UsageSlot& slot = seg.slot(s);
        std::uint64_t tail = slot.tail.load(std::memory_order_acquire);
        std::size_t room = kMaxBatch - read;
        std::size_t old_size = batch->size();
        batch->resize(old_size + room);
        std::uint64_t end = tail;
        std::size_t n =
            seg.peek(s, tail, batch->data() + old_size, room, &end);
        const std::uint64_t generation =
            slot.generation.load(std::memory_order_acquire);
        std::size_t kept = old_size;
        for (std::size_t i = 0; i < n; ++i) {
            UsageRecord& r = (*batch)[old_size + i];
            r.generation = generation;
            if (!admit(r, now)) continue;
            if (kept != old_size + i) (*batch)[kept] = r;
            ++kept;
        }
        batch->resize(kept);
        read += n;
        if (end > tail) {
            ends->push_back({&src, s, end, n});
        }
    }
}

// Closes, reads and commits the aggregation buffers that are due. False
// when the node turned out to be another apikeyd's.
bool Drainer::collect_aggregates() {
    const std::int64_t now = now_us();
    for (auto& src : sources_) {
        unreported_agg_unknown_ += aggregates_->collect(&src->segment, now);
    }
    try {
        aggregates_->commit(now);
    } catch (const NodeInUse&) {
        node_lost();
        return false;
    }
    return true;
}

// Only usage of keys in our own key table, for their own org, is stored;
// checked before the spool, which holds only what was admitted.
bool Drainer::admit(const UsageRecord& r, std::int64_t now) {
    switch (keys_->check(uuid_of(r.key_id), uuid_of(r.org_id), now)) {
    case KeyVerdict::kKnown:
        return true;
    case KeyVerdict::kUnknownKey:
        stats_->rejected_unknown_key++;
        unreported_unknown_++;
        return false;
    case KeyVerdict::kOrgMismatch:
        stats_->rejected_org_mismatch++;
        unreported_mismatch_++;
        return false;
    }
    return false;
}

// A line a minute at most: a forging process must not flood the log.
void Drainer::report_rejections(std::int64_t now) {
    if (unreported_unknown_ + unreported_mismatch_ + unreported_agg_unknown_ ==
            0 ||
        now < next_reject_log_us_) {
        return;
    }
    log_warn("drainer: rejected usage records not matching the key table: " +
             std::to_string(unreported_unknown_) + " of unknown keys, " +
             std::to_string(unreported_mismatch_) + " with another org; " +
             std::to_string(unreported_agg_unknown_) +
             " aggregate entries of unknown keys");
    unreported_unknown_ = unreported_mismatch_ = unreported_agg_unknown_ = 0;
    next_reject_log_us_ = now + kRejectLogEveryUs;
}

// Order matters for exactly-once: whatever is in the spool is older than
// this batch, so it is replayed first, and while anything stays spooled the
// new batch is spooled behind it. A long replay is cut into turns of
// kReplayTurnUs so the rings and the aggregation buffers are still read
// between them: a spool of a long outage must not fill either. False when
// nothing may be stored (the node is another apikeyd's): the records stay
// in the rings.
bool Drainer::store_batch(const std::vector<UsageRecord>& batch) {
    if (!spool_->empty()) {
        const std::int64_t turn_ends = now_us() + kReplayTurnUs;
        const auto commit = [this](const std::vector<UsageRecord>& old) {
            return commit_to_database(old);
        };
        // One batch at a time; the first is always offered.
        bool progressed = false;
        while (spool_->replay(commit, 1) == 1) {
            progressed = true;
            if (spool_->empty() || now_us() >= turn_ends) break;
        }
        // More to replay and the database takes it: no idle sleep.
        replay_pending_ = progressed && !spool_->empty();
        stats_->spool_bytes = spool_->bytes();
        if (spool_->empty()) {
            log_info("drainer: spool replayed into PostgreSQL");
        }
    }
    if (node_in_use_) return false;

    if (batch.empty()) return true;
    if (spool_->empty() && commit_to_database(batch)) return true;
    if (node_in_use_) return false;

    if (spool_->append(batch)) {
        stats_->spooled += batch.size();
    } else {
        stats_->spool_dropped += batch.size();
        unlogged_drops_ += batch.size();
        // One line a second at most, with the count since the last line.
        std::int64_t now = now_us();
        if (now >= next_drop_log_us_) {
            log_error("drainer: spool full (" +
                      std::to_string(spool_->bytes()) + " bytes), dropped " +
                      std::to_string(unlogged_drops_) + " usage records");
            unlogged_drops_ = 0;
            next_drop_log_us_ = now + 1000000;
        }
    }
    stats_->spool_bytes = spool_->bytes();
    return true;
}

bool Drainer::commit_to_database(const std::vector<UsageRecord>& batch) {
    auto started = std::chrono::steady_clock::now();
    try {
        CommitStats cs = store_->commit(batch);
        auto took = std::chrono::duration_cast<std::chrono::microseconds>(
                        std::chrono::steady_clock::now() - started)
                        .count();
        stats_->committed += cs.inserted;
        stats_->duplicates += cs.duplicates;
        stats_->batches++;
        stats_->last_batch_size = batch.size();
        stats_->last_batch_us = static_cast<std::uint64_t>(took);
        stats_->db_connected = true;
        std::int64_t newest = 0;
        for (const UsageRecord& r : batch) newest = std::max(newest, r.time_us);
        if (newest > stats_->newest_committed_us.load()) {
            stats_->newest_committed_us = newest;
        }
        return true;
    } catch (const NodeInUse&) {
        node_lost();
        return false;
    } catch (const std::exception& e) {
        stats_->db_errors++;
        if (stats_->db_connected.exchange(false)) {
            log_warn(std::string("drainer: PostgreSQL unavailable (") +
                     e.what() + "); spooling usage to " + config_.spool_dir);
        }
        return false;
    }
}

// Slots of workers that are gone: retire those that died without saying
// so (kill -9), and free retired ones once drained, for new workers.
void Drainer::reap_slots(Source& src) {
    retire_dead_owners(src);
    UsageSegment& seg = src.segment;
    for (std::uint32_t s = 0; s < seg.slot_count(); ++s) {
        if (seg.free_if_drained(s)) {
            log_debug("drainer: ring " + std::to_string(s) + " freed");
        }
    }
}

// Owner pids mean something only in the PID namespace the workers run in:
// see ring_owners.h for when a missing pid is taken as a dead worker.
void Drainer::retire_dead_owners(Source& src) {
    constexpr auto kOwned = static_cast<std::uint32_t>(SlotOwnership::kOwned);
    UsageSegment& seg = src.segment;
    // Reading /proc for evidence: once a second at most, until found.
    std::int64_t now = now_us();
    bool look = !src.owners_here && now >= src.next_owner_check_us;
    if (look) src.next_owner_check_us = now + kOwnerCheckEveryUs;
    std::vector<std::uint32_t> gone;
    for (std::uint32_t s = 0; s < seg.slot_count(); ++s) {
        UsageSlot& slot = seg.slot(s);
        std::int32_t pid = slot.owner_pid.load(std::memory_order_acquire);
        if (slot.state.load() != kOwned || pid <= 0) continue;
        if (!process_exists(pid)) {
            gone.push_back(s);
        } else if (look && !src.owners_here &&
                   owner_seen_here(pid, slot.claimed_at_us.load())) {
            src.owners_here = true;
            log_debug("drainer: ring owners run in apikeyd's PID namespace");
        }
    }
    if (gone.empty()) return;
    if (!src.owners_here) {
        if (!src.owners_warned) {
            log_warn("drainer: no worker of usage segment " + src.path +
                     " seen in apikeyd's PID namespace: rings of workers "
                     "that died are not retired by pid (run nginx and "
                     "apikeyd in one PID namespace)");
            src.owners_warned = true;
        }
        return;
    }
    // Rings kept for a nested namespace's process: looked at again once a
    // second (a scan of /proc), not on every pass.
    bool rescan = now >= src.next_nested_scan_us;
    if (rescan) src.next_nested_scan_us = now + kOwnerCheckEveryUs;
    for (std::uint32_t s : gone) {
        UsageSlot& slot = seg.slot(s);
        std::int32_t pid = slot.owner_pid.load();
        auto known = src.kept.find(s);
        bool was_kept = known != src.kept.end() && known->second == pid;
        if (was_kept && !rescan) continue;
        if (pid_used_in_nested_namespace(pid)) {
            if (!was_kept) {
                src.kept[s] = pid;
                log_info("drainer: no process " + std::to_string(pid) +
                         " here, but one in a nested PID namespace has that "
                         "pid: ring " + std::to_string(s) + " kept");
            }
            continue;
        }
        src.kept.erase(s);
        std::uint32_t expected = kOwned;
        if (slot.state.compare_exchange_strong(
                expected,
                static_cast<std::uint32_t>(SlotOwnership::kRetired))) {
            log_info("drainer: worker " + std::to_string(pid) + " of ring " +
                     std::to_string(s) + " is gone; ring retired");
        }
    }
}

// usage_offsets rows of finished rings (none of the mapped segments has
// that slot and generation) last advanced before the retention window.
// Only with a segment mapped: otherwise we cannot tell which rings live.
void Drainer::prune_offsets() {
    std::int64_t now = now_us();
    if (now < next_prune_us_ || sources_.empty()) return;
    std::vector<std::pair<std::uint32_t, std::uint64_t>> live;
    for (const auto& src : sources_) {
        for (std::uint32_t s = 0; s < src->segment.slot_count(); ++s) {
            live.emplace_back(s, src->segment.slot(s).generation.load());
        }
    }
    std::int64_t before = retention_start_us(now, config_.retention_months);
    try {
        std::size_t n = store_->prune_offsets(before, live);
        if (n > 0) {
            log_info("drainer: pruned " + std::to_string(n) +
                     " offset rows of finished rings (usage_offsets, "
                     "usage_aggregate_offsets)");
        }
        next_prune_us_ = now + kMaintenanceEveryUs;
    } catch (const NodeInUse&) {
        node_lost();
        next_prune_us_ = now + kNodeRetryUs;
    } catch (const std::exception& e) {
        log_debug(std::string("drainer: pruning usage_offsets: ") + e.what());
        next_prune_us_ = now + 10 * 1000000LL;  // retry soon
    }
}

void Drainer::maintain_partitions() {
    std::int64_t now = now_us();
    if (now < next_maintenance_us_) return;
    try {
        std::vector<std::string> created, dropped;
        store_->maintain_partitions(now, &created, &dropped);
        for (const auto& p : created) log_info("drainer: created " + p);
        for (const auto& p : dropped) log_info("drainer: dropped " + p);
        next_maintenance_us_ = now + kMaintenanceEveryUs;
    } catch (const std::exception& e) {
        log_debug(std::string("drainer: partition maintenance: ") + e.what());
        next_maintenance_us_ = now + 10 * 1000000LL;  // retry soon
    }
}

SegmentSnapshot Drainer::snapshot() const {
    SegmentSnapshot snap;
    std::lock_guard<std::mutex> lock(sources_mutex_);
    for (const auto& src : sources_) {
        const UsageSegment& seg = src->segment;
        snap.unslotted_drops += seg.header().unslotted_drops.load();
        for (std::uint32_t s = 0; s < seg.slot_count(); ++s) {
            const UsageSlot& slot = seg.slot(s);
            RingSnapshot r{};
            r.segment = seg.header().created_at_us;
            r.slot = s;
            r.state = static_cast<SlotOwnership>(slot.state.load());
            r.depth = slot.head.load() - slot.tail.load();
            r.dropped = slot.dropped.load();
            r.policy_skipped = seg.stream().state(s).policy_skipped.load();
            for (int c = 0; c < static_cast<int>(UnrecordedCounter::kCount);
                 ++c) {
                r.unrecorded[c] = slot.unrecorded[c].load();
            }
            r.agg_overflow = slot.agg_overflow.load();
            r.agg_label_overflow = slot.agg_label_overflow.load();
            r.agg_histogram_overflow = slot.agg_histogram_overflow.load();
            r.agg_ipset_overflow = slot.agg_ipset_overflow.load();
            std::uint64_t closed = 0;
            r.agg_pending =
                seg.agg_closed_epoch(s, &closed) || !seg.agg_empty(s);
            snap.rings.push_back(r);
        }
    }
    return snap;
}

}  // namespace apikey
