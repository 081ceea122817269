#include "metrics.h"

#include <sstream>

namespace apikey {
namespace {

const char* const kUnrecordedNames[] = {"missing", "malformed", "unknown",
                                        "unavailable"};
static_assert(sizeof(kUnrecordedNames) / sizeof(kUnrecordedNames[0]) ==
              static_cast<int>(UnrecordedCounter::kCount));

const char* state_name(SlotOwnership s) {
    switch (s) {
        case SlotOwnership::kFree: return "free";
        case SlotOwnership::kOwned: return "owned";
        case SlotOwnership::kRetired: return "retired";
    }
    return "unknown";
}

// During a layout change two segments are mapped: the segment label keeps
// their rings' series apart.
std::string ring_labels(const RingSnapshot& r) {
    return "segment=\"" + std::to_string(r.segment) + "\",slot=\"" +
           std::to_string(r.slot) + "\"";
}

class Writer {
public:
    void family(const char* name, const char* type, const char* help) {
        out_ << "# HELP " << name << ' ' << help << '\n'
             << "# TYPE " << name << ' ' << type << '\n';
    }
    template <typename T>
    void sample(const char* name, T value, const std::string& labels = "") {
        out_ << name;
        if (!labels.empty()) out_ << '{' << labels << '}';
        out_ << ' ' << value << '\n';
    }
    template <typename T>
    void single(const char* name, const char* type, const char* help,
                T value) {
        family(name, type, help);
        sample(name, value);
    }
    std::string str() const { return out_.str(); }

private:
    std::ostringstream out_;
};

}  // namespace

std::string format_metrics(const KeyPublisherStats& keys,
                           const DrainerStats& drain,
                           const SegmentSnapshot& rings,
                           std::int64_t now_us) {
    Writer w;

    w.single("apikey_keys", "gauge", "Keys in the published key table.",
             keys.keys.load());
    std::int64_t synced = keys.synced_at_us.load();
    w.single("apikey_key_table_age_seconds", "gauge",
             "Seconds since the key table was last confirmed against "
             "PostgreSQL (-1: never).",
             synced ? (now_us - synced) / 1e6 : -1.0);
    w.single("apikey_key_table_ready", "gauge",
             "1 once the first full key load is published.",
             keys.ready.load() ? 1 : 0);
    w.single("apikey_key_notifications_total", "counter",
             "Key changes applied from LISTEN/NOTIFY.",
             keys.notifications.load());
    w.single("apikey_key_full_syncs_total", "counter",
             "Full key-table resyncs.", keys.full_syncs.load());

    w.single("apikey_records_drained_total", "counter",
             "Usage records read from the rings.", drain.drained.load());
    w.single("apikey_records_committed_total", "counter",
             "Usage records committed to PostgreSQL.",
             drain.committed.load());
    w.single("apikey_records_duplicate_total", "counter",
             "Records skipped at commit because they were already committed "
             "(retries after a crash or an outage).",
             drain.duplicates.load());
    w.single("apikey_records_spooled_total", "counter",
             "Records written to the disk spool while PostgreSQL was down.",
             drain.spooled.load());
    w.single("apikey_records_spool_dropped_total", "counter",
             "Records dropped because the spool was full.",
             drain.spool_dropped.load());
    w.single("apikey_spool_bytes", "gauge", "Bytes in the disk spool.",
             drain.spool_bytes.load());
    w.single("apikey_batches_total", "counter", "Batches committed.",
             drain.batches.load());
    w.single("apikey_batch_size", "gauge", "Records in the last batch.",
             drain.last_batch_size.load());
    w.single("apikey_batch_duration_seconds", "gauge",
             "Commit time of the last batch.",
             drain.last_batch_us.load() / 1e6);
    std::int64_t newest = drain.newest_committed_us.load();
    w.single("apikey_ingest_lag_seconds", "gauge",
             "Now minus the time of the newest committed record (-1: none "
             "yet).",
             newest ? (now_us - newest) / 1e6 : -1.0);
    w.single("apikey_postgres_errors_total", "counter",
             "Failed PostgreSQL operations (keys and usage).",
             drain.db_errors.load() + keys.db_errors.load());
    w.single("apikey_postgres_up", "gauge",
             "1 while apikeyd's connections to PostgreSQL work.",
             (drain.db_connected.load() || drain.batches.load() == 0) &&
                     keys.db_connected.load()
                 ? 1
                 : 0);
    w.family("apikey_usage_rejected_total", "counter",
             "Usage records not stored: their key is not in apikeyd's key "
             "table (unknown_key), or their org is not the key's "
             "(org_mismatch).");
    w.sample("apikey_usage_rejected_total", drain.rejected_unknown_key.load(),
             "reason=\"unknown_key\"");
    w.sample("apikey_usage_rejected_total",
             drain.rejected_org_mismatch.load(), "reason=\"org_mismatch\"");
    w.single("apikey_agg_buffers_committed_total", "counter",
             "Workers' aggregation buffers committed to PostgreSQL.",
             drain.agg_buffers_committed.load());
    w.single("apikey_agg_buffers_duplicate_total", "counter",
             "Aggregation buffers skipped at commit because they were "
             "already committed (a restart between COMMIT and clearing).",
             drain.agg_buffers_duplicate.load());
    w.single("apikey_agg_entries_committed_total", "counter",
             "Aggregate entries (key x endpoint x method x hour) committed.",
             drain.agg_entries_committed.load());
    w.single("apikey_agg_requests_committed_total", "counter",
             "Requests counted in the aggregate entries committed.",
             drain.agg_requests_committed.load());
    w.family("apikey_agg_entries_rejected_total", "counter",
             "Aggregate entries not stored: their key is not in apikeyd's "
             "key table (unknown_key), or their counts or times are "
             "impossible (corrupt).");
    w.sample("apikey_agg_entries_rejected_total",
             drain.agg_rejected_unknown_key.load(), "reason=\"unknown_key\"");
    w.sample("apikey_agg_entries_rejected_total",
             drain.agg_entries_ignored.load(), "reason=\"corrupt\"");
    w.single("apikey_usage_waiting_for_keys", "gauge",
             "1 while no key set is known to check usage against (nothing "
             "loaded from PostgreSQL, none published before): usage stays "
             "in the rings.",
             drain.waiting_for_keys.load() ? 1 : 0);
    w.single("apikey_node_in_use", "gauge",
             "1 while another apikeyd holds this --node in PostgreSQL: "
             "nothing is drained.",
             drain.node_in_use.load() ? 1 : 0);
    w.single("apikey_usage_segment_attached", "gauge",
             "1 while the usage segment nginx created is mapped.",
             drain.segment_attached.load() ? 1 : 0);
    w.single("apikey_unslotted_drops_total", "counter",
             "Requests not recorded because their worker had no ring.",
             rings.unslotted_drops);

    w.family("apikey_ring_depth", "gauge",
             "Bytes of records waiting in a ring's stream.");
    for (const RingSnapshot& r : rings.rings) {
        w.sample("apikey_ring_depth", r.depth,
                 ring_labels(r) + ",state=\"" + state_name(r.state) + "\"");
    }
    // One series per ring, labelled with its segment and slot.
    auto per_ring = [&](const char* name, const char* type, const char* help,
                        auto value) {
        w.family(name, type, help);
        for (const RingSnapshot& r : rings.rings) {
            w.sample(name, value(r), ring_labels(r));
        }
    };
    per_ring("apikey_ring_dropped_total", "counter",
             "Records dropped because the chunk pool was empty.",
             [](const RingSnapshot& r) { return r.dropped; });
    per_ring("apikey_raw_policy_skipped_total", "counter",
             "Requests with a known key that apikey_usage_raw kept out of "
             "the raw stream.",
             [](const RingSnapshot& r) { return r.policy_skipped; });
    per_ring("apikey_agg_overflow_total", "counter",
             "Requests not aggregated because a worker's aggregation buffer "
             "was full (not in the rollups or request_count).",
             [](const RingSnapshot& r) { return r.agg_overflow; });
    per_ring("apikey_agg_label_overflow_total", "counter",
             "Requests aggregated under endpoint and method \"(other)\" "
             "because a buffer's label table was full (still counted).",
             [](const RingSnapshot& r) { return r.agg_label_overflow; });
    per_ring("apikey_agg_histogram_overflow_total", "counter",
             "Latencies left out of a rollup's histogram because a buffer's "
             "cell table was full (the request is still counted).",
             [](const RingSnapshot& r) { return r.agg_histogram_overflow; });
    per_ring("apikey_agg_ipset_overflow_total", "counter",
             "Client addresses left out of distinct_ips because a buffer's "
             "address set was full (the request is still counted).",
             [](const RingSnapshot& r) { return r.agg_ipset_overflow; });
    per_ring("apikey_agg_pending", "gauge",
             "1 while a slot's aggregation buffers hold requests not "
             "committed yet.",
             [](const RingSnapshot& r) { return r.agg_pending ? 1 : 0; });
    w.family("apikey_requests_unrecorded_total", "counter",
             "Requests without a usable key, by result (counted, not "
             "recorded).");
    for (int c = 0; c < static_cast<int>(UnrecordedCounter::kCount); ++c) {
        std::uint64_t sum = 0;
        for (const RingSnapshot& r : rings.rings) sum += r.unrecorded[c];
        w.sample("apikey_requests_unrecorded_total", sum,
                 std::string("result=\"") + kUnrecordedNames[c] + "\"");
    }
    return w.str();
}

std::string format_http_metrics(const HttpStats& http) {
    Writer w;
    w.single("apikey_http_connections", "gauge",
             "Open HTTP connections.",
             http.connections.load());
    w.single("apikey_http_connections_refused_total", "counter",
             "Connections closed at once because the cap was reached.",
             http.connections_refused.load());
    w.single("apikey_http_api_queued", "gauge",
             "Analytics requests waiting for a worker.",
             http.api_queued.load());
    w.single("apikey_http_write_timeouts_total", "counter",
             "Connections closed because the client stopped reading.",
             http.write_timeouts.load());
    w.family("apikey_http_refused_total", "counter",
             "Requests answered by the connection loop itself, by status: "
             "400 malformed, 408 head not in time, 411 chunked body, 413 "
             "body too large, 431 head too large, 503 workers busy.");
    for (int r = 0; r < static_cast<int>(HttpRefusal::kCount); ++r) {
        w.sample("apikey_http_refused_total", http.refused[r].load(),
                 "status=\"" + std::to_string(kHttpRefusalStatus[r]) + "\"");
    }
    return w.str();
}

}  // namespace apikey
