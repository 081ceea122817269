#include "drainer.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include "log.h"
#include "pg.h"
#include "spool.h"
#include "time_util.h"
#include "usage_store.h"

namespace apikey {
namespace {

// Larger batches amortise the rollup upserts (one row per key x endpoint x
// method per batch) and the commit's fsync; 16k records are ~4.5 MiB.
constexpr std::size_t kMaxBatch = 16384;
constexpr int kIdleSleepMs = 20;
constexpr std::int64_t kAttachRetryUs = 1000000;
constexpr std::int64_t kMaintenanceEveryUs = 3600LL * 1000000;

bool process_is_gone(std::int32_t pid) {
    return pid > 0 && kill(pid, 0) == -1 && errno == ESRCH;
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
};

Drainer::Drainer(const DaemonConfig& config, DrainerStats* stats)
    : config_(config),
      stats_(stats),
      store_(std::make_unique<UsageStore>(config)),
      spool_(std::make_unique<Spool>(
          config.spool_dir,
          static_cast<std::uint64_t>(config.spool_max_mb) << 20,
          [](const std::string& m) { log_warn("spool: " + m); })) {
    stats_->spool_bytes = spool_->bytes();
}

Drainer::~Drainer() = default;

void Drainer::run(const std::atomic<bool>& stop) {
    while (true) {
        bool stopping = stop.load();
        std::size_t n = 0;
        try {
            attach_segments();
            maintain_partitions();
            n = drain_once();
        } catch (const std::exception& e) {
            log_error(std::string("drainer: ") + e.what());
        }
        if (stopping) break;  // one last pass after the stop request
        if (n < kMaxBatch) {
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

std::size_t Drainer::drain_once() {
    if (!resumed_ && !sources_.empty()) {
        try {
            resume_from_database();
        } catch (const pg::Error&) {
            // Not now; commits still skip what is already committed.
        }
    }

    std::vector<UsageRecord> batch;
    std::vector<RingEnd> ends;
    for (auto& src : sources_) {
        collect(*src, &batch, &ends);
    }

    if (!batch.empty() || !spool_->empty()) {
        store_batch(batch);
    }

    // Committed (to PostgreSQL or the spool): now the rings may move on.
    for (const RingEnd& end : ends) {
        end.source->segment.commit(end.slot, end.position);
    }
    for (auto& src : sources_) {
        reap_slots(*src);
    }
    return batch.size();
}

void Drainer::collect(Source& src, std::vector<UsageRecord>* batch,
                      std::vector<RingEnd>* ends) {
    UsageSegment& seg = src.segment;
    for (std::uint32_t s = 0; s < seg.slot_count(); ++s) {
        if (batch->size() >= kMaxBatch) return;
        UsageSlot& slot = seg.slot(s);
        std::uint64_t tail = slot.tail.load(std::memory_order_acquire);
        std::size_t room = kMaxBatch - batch->size();
        std::size_t old_size = batch->size();
        batch->resize(old_size + room);
        std::size_t n = seg.peek(s, tail, batch->data() + old_size, room);
        batch->resize(old_size + n);
        if (n > 0) {
            ends->push_back({&src, s, tail + n});
        }
    }
}

// Order matters for exactly-once: whatever is in the spool is older than
// this batch, so it is replayed first, and while anything stays spooled the
// new batch is spooled behind it.
void Drainer::store_batch(const std::vector<UsageRecord>& batch) {
    stats_->drained += batch.size();

    if (!spool_->empty()) {
        spool_->replay([this](const std::vector<UsageRecord>& old) {
            return commit_to_database(old);
        });
        stats_->spool_bytes = spool_->bytes();
        if (spool_->empty()) {
            log_info("drainer: spool replayed into PostgreSQL");
        }
    }

    if (batch.empty()) return;
    if (spool_->empty() && commit_to_database(batch)) return;

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
    UsageSegment& seg = src.segment;
    for (std::uint32_t s = 0; s < seg.slot_count(); ++s) {
        UsageSlot& slot = seg.slot(s);
        std::uint32_t state = slot.state.load();
        if (state == static_cast<std::uint32_t>(SlotOwnership::kOwned) &&
            process_is_gone(slot.owner_pid.load())) {
            std::uint32_t expected = state;
            if (slot.state.compare_exchange_strong(
                    expected,
                    static_cast<std::uint32_t>(SlotOwnership::kRetired))) {
                log_info("drainer: worker " +
                         std::to_string(slot.owner_pid.load()) +
                         " of ring " + std::to_string(s) +
                         " is gone; ring retired");
            }
        }
        if (seg.free_if_drained(s)) {
            log_debug("drainer: ring " + std::to_string(s) + " freed");
        }
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
            for (int c = 0; c < static_cast<int>(UnrecordedCounter::kCount);
                 ++c) {
                r.unrecorded[c] = slot.unrecorded[c].load();
            }
            snap.rings.push_back(r);
        }
    }
    return snap;
}

}  // namespace apikey
