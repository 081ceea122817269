// Spikes (docs/api.md#spikes). A key spikes in a complete UTC hour when
// its requests in that hour are >= spike_ratio x its baseline and >=
// spike_min (and > 0). Its baseline is its mean hourly requests over the 7
// days before the hour, counted from its creation hour when the key is
// younger than that (hours before a key existed are not zeros of its
// history); a key with under 24 h of history at the hour's start has none
// (null) and never spikes.
//
// Here: the rule (pure, unit-tested), its SQL spelling for the listing
// filter, the per-key view's spike hours, and the hourly refresh of
// api_key_listing's last-hour columns (migration 0005) with the
// apikey_keys_spiking gauge.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "api_params.h"
#include "pg.h"

namespace apikey::api {

inline constexpr std::int64_t kBaselineHours = 7 * 24;
inline constexpr std::int64_t kMinHistoryHours = 24;

// Start of the last complete UTC hour at now_us.
std::int64_t last_complete_hour(std::int64_t now_us) noexcept;

// How many hours the baseline of the hour starting at hour_us averages:
// those of the 7 days before it from the key's creation hour on; nullopt
// when the key was created after hour_us - 24 h.
std::optional<std::int64_t> baseline_hours(std::int64_t created_us,
                                           std::int64_t hour_us) noexcept;

bool is_spike(std::int64_t requests, std::optional<double> baseline,
              const SpikeRule& rule) noexcept;

// The same rule over api_key_listing `s` (its hour, requests_hour,
// baseline_hourly) for the hour, ratio and min parameters named: a
// boolean, never NULL.
std::string spike_condition(const std::string& hour_param,
                            const std::string& ratio_param,
                            const std::string& min_param);

// A ratio as a parameter: the shortest text that reads back as the same
// double (PostgreSQL's float8 and strtod agree on it).
std::string ratio_text(double ratio);

// One hour of a key: its requests (every endpoint and method).
struct HourTotal {
    std::int64_t t_us = 0;
    std::int64_t requests = 0;
};

struct SpikeHour {
    std::int64_t t_us = 0;
    std::int64_t requests = 0;
    double baseline_hourly = 0;
    std::optional<double> ratio;  // nullopt: a baseline of 0
};

// The hours t in [from_us, to_us) that are complete at now_us (t + 1 h <=
// now) and meet the rule, each against its own baseline. `hours` holds
// the key's hours with requests, ascending, from 7 days before from_us on
// (hours missing are 0).
std::vector<SpikeHour> find_spikes(const std::vector<HourTotal>& hours,
                                   std::int64_t created_us,
                                   std::int64_t from_us, std::int64_t to_us,
                                   std::int64_t now_us, const SpikeRule& rule);

// The first hour whose baseline find_spikes() needs for a view from from_us.
std::int64_t spike_window_start(std::int64_t from_us) noexcept;

// A key's hour totals with from_us <= hour < to_us, from the hourly rollup.
std::vector<HourTotal> query_hour_totals(pg::Connection& conn,
                                         const std::string& org_id,
                                         const std::string& key_id,
                                         std::int64_t from_us,
                                         std::int64_t to_us);

// --- the hourly refresh ------------------------------------------------------

struct SpikeStats {
    // Keys spiking in the last complete hour by the default rule, all orgs
    // of the database; -1 until first counted.
    std::atomic<std::int64_t> spiking{-1};
};

// Sets api_key_listing's hour, requests_hour and baseline_hourly for
// `hour_us` (every key with requests in it or in the 7 days before), in
// batches of keys, one transaction each; once per hour for all nodes:
// under a session advisory lock, skipped when api_spike_refresh already
// names the hour unless `force`. Returns the keys it updated, nullopt when
// another node had done it. A `stop` set between batches ends it early,
// the hour not marked done.
std::optional<std::size_t> refresh_spikes(
    pg::Connection& conn, std::int64_t hour_us, bool force,
    const std::atomic<bool>* stop = nullptr);

// Keys spiking in `hour_us` by the default rule, over every org.
std::int64_t count_spiking(pg::Connection& conn, std::int64_t hour_us);

// apikeyd's thread: refreshes at start (forced) and a few seconds after
// every hour boundary, and counts the spiking keys every minute.
class SpikeRefresher {
   public:
    SpikeRefresher(std::string conninfo, SpikeStats* stats);
    void run(const std::atomic<bool>& stop);

   private:
    void step(std::int64_t now_us, const std::atomic<bool>& stop);

    std::string conninfo_;
    SpikeStats* stats_;
    std::int64_t refreshed_hour_ = -1;  // -1: none yet (force)
    std::int64_t next_count_us_ = 0;
};

// The gauge's Prometheus text (nothing until first counted).
std::string format_spike_metrics(const SpikeStats& stats);

}  // namespace apikey::api
