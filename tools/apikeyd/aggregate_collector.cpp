#include "aggregate_collector.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "log.h"

namespace apikey {
namespace {

// Retries while PostgreSQL is unavailable: the buffers wait in memory.
constexpr std::int64_t kRetryUs = 250000;

Uuid uuid_of(const std::array<std::uint8_t, 16>& bytes) {
    Uuid id;
    std::memcpy(id.data(), bytes.data(), id.size());
    return id;
}

}  // namespace

std::size_t AggregateCollector::collect(UsageSegment* seg,
                                        std::int64_t now_us) {
    constexpr auto kFree = static_cast<std::uint32_t>(SlotOwnership::kFree);
    constexpr auto kRetired =
        static_cast<std::uint32_t>(SlotOwnership::kRetired);
    std::size_t rejected = 0;
    for (std::uint32_t s = 0; s < seg->slot_count(); ++s) {
        const std::uint32_t state = seg->slot(s).state.load();
        const SlotKey key(seg, s);
        if (state == kFree) {
            slots_.erase(key);
            continue;
        }
        auto [it, fresh] = slots_.try_emplace(key);
        SlotState& st = it->second;
        if (fresh) st.active_since_us = st.closed_since_us = now_us;
        std::uint64_t epoch = 0;
        if (!seg->agg_closed_epoch(s, &epoch)) {
            st.closed_unread = false;
            const bool due = state == kRetired || now_us >= st.next_close_us;
            if (!due) continue;
            st.next_close_us = now_us + close_every_us();
            if (seg->agg_empty(s)) continue;
            epoch = seg->agg_close(s);
            if (epoch == 0) continue;  // not closable (cannot happen here)
            st.closed_since_us = st.active_since_us;
            st.active_since_us = now_us;
            st.read = false;
        }
        if (st.read) continue;
        st.closed_unread = true;
        if (!seg->agg_settled(s, epoch)) continue;
        rejected += read_closed(seg, s, epoch, now_us);
        st.read = true;
        st.closed_unread = false;
    }
    return rejected;
}

// Reads the closed buffer once; only entries of keys in our own index are
// kept, each with that key's org.
std::size_t AggregateCollector::read_closed(UsageSegment* seg,
                                            std::uint32_t slot,
                                            std::uint64_t epoch,
                                            std::int64_t now_us) {
    Pending p{seg, AggregateBuffer{}};
    AggregateBuffer& b = p.buffer;
    b.slot = slot;
    b.generation = seg->slot(slot).generation.load();
    b.epoch = epoch;
    std::vector<AggregateEntry> read;
    seg->agg_read(slot, epoch, &read);
    std::size_t rejected = 0;
    b.entries.reserve(read.size());
    b.orgs.reserve(read.size());
    for (AggregateEntry& e : read) {
        std::optional<Uuid> org = keys_->org_of(uuid_of(e.key_id), now_us);
        if (!org) {
            ++rejected;
            continue;
        }
        b.entries.push_back(std::move(e));
        b.orgs.push_back(*org);
    }
    std::vector<IpSetEntry> ips;
    seg->agg_read_ips(slot, epoch, &ips);
    for (const IpSetEntry& e : ips) {
        Uuid key;
        std::memcpy(key.data(), e.key_id, key.size());
        if (std::optional<Uuid> org = keys_->org_of(key, now_us)) {
            b.ips.push_back(e);
            b.ip_orgs.push_back(*org);
        }
    }
    stats_->agg_rejected_unknown_key += rejected;
    pending_.push_back(std::move(p));
    return rejected;
}

bool AggregateCollector::commit(std::int64_t now_us) {
    if (pending_.empty() || now_us < next_commit_us_) return pending_.empty();
    std::vector<AggregateBuffer> buffers;
    buffers.reserve(pending_.size());
    for (const Pending& p : pending_) buffers.push_back(p.buffer);
    AggregateCommitStats cs;
    const auto started = std::chrono::steady_clock::now();
    try {
        cs = store_->commit_aggregates(buffers);
    } catch (const NodeInUse&) {
        throw;
    } catch (const std::exception& e) {
        stats_->db_errors++;
        next_commit_us_ = now_us + kRetryUs;
        if (!db_down_logged_) {
            log_warn(std::string("drainer: aggregates not committed (") +
                     e.what() + "); they wait in the usage segment");
            db_down_logged_ = true;
        }
        return false;
    }
    last_commit_us_ = std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::steady_clock::now() - started)
                          .count();
    if (db_down_logged_) log_info("drainer: aggregates committed again");
    db_down_logged_ = false;
    // Committed: now the workers may have the buffers back.
    for (const Pending& p : pending_) {
        p.seg->agg_clear(p.buffer.slot, p.buffer.epoch);
        auto it = slots_.find(SlotKey(p.seg, p.buffer.slot));
        if (it != slots_.end()) it->second.read = false;
    }
    pending_.clear();
    stats_->agg_buffers_committed += cs.buffers;
    stats_->agg_buffers_duplicate += cs.duplicates;
    stats_->agg_entries_committed += cs.entries;
    stats_->agg_requests_committed += cs.requests;
    stats_->agg_entries_ignored += cs.ignored;
    return true;
}

std::int64_t AggregateCollector::close_every_us() const {
    return std::clamp(kAggregateSlowCommitFactor * last_commit_us_,
                      kAggregateEveryUs, kAggregateMaxEveryUs);
}

std::int64_t AggregateCollector::unread_since_us(std::int64_t now_us) const {
    std::int64_t oldest = now_us;
    for (const auto& [key, st] : slots_) {
        oldest = std::min(oldest, st.active_since_us);
        if (st.closed_unread) oldest = std::min(oldest, st.closed_since_us);
    }
    return oldest;
}

void AggregateCollector::forget(const UsageSegment* seg) {
    for (auto it = slots_.begin(); it != slots_.end();) {
        it = it->first.first == seg ? slots_.erase(it) : std::next(it);
    }
    pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                  [seg](const Pending& p) {
                                      return p.seg == seg;
                                  }),
                   pending_.end());
}

}  // namespace apikey
