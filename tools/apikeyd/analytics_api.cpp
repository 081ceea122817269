#include "analytics_api.h"

#include <httplib.h>

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "analytics_cursor.h"
#include "analytics_distinct_ips.h"
#include "analytics_etag.h"
#include "analytics_listing.h"
#include "http_server.h"
#include "log.h"
#include "time_util.h"
#include "usage_export.h"

namespace apikey::api {
namespace {

// Every "not found" has this one body, whether the org or key exists in
// another org or not at all (and the server's own 404 says the same).
constexpr const char* kNotFound = "not found";
constexpr const char* kRealm = "Bearer realm=\"apikeyd\"";
constexpr const char* kOrgRoute = R"(/api/orgs/([^/]+)/api-keys/usage)";
constexpr const char* kKeyRoute = R"(/api/orgs/([^/]+)/api-keys/([^/]+)/usage)";
constexpr const char* kExportRoute =
    R"(/api/orgs/([^/]+)/api-keys/usage/export)";
constexpr const char* kSelfRoute = "/api/keys/self/usage";

// An answer other than 200, thrown by the request steps.
struct HttpError {
    int status;
    std::string message;
    std::string www_authenticate;  // "" = no header
};

Json ms_or_null(std::optional<double> ms) {
    return ms ? Json(round_ms(*ms)) : Json(nullptr);
}

Json nullable(const std::optional<std::string>& value) {
    return value ? Json(*value) : Json(nullptr);
}

Json time_or_null(std::optional<std::int64_t> us) {
    return us ? Json(format_rfc3339(*us, TimePrecision::kMillis))
              : Json(nullptr);
}

// Names and endpoints are UTF-8 in the database; replace, never throw.
std::string dump(const Json& body) {
    return body.dump(-1, ' ', false, Json::error_handler_t::replace);
}

void send(httplib::Response& res, int status, const Json& body) {
    res.status = status;
    res.set_header("Cache-Control", "no-store");
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_content(dump(body), "application/json");
}

std::vector<std::string> header_values(const httplib::Request& req,
                                       const char* name) {
    std::vector<std::string> out;
    auto [first, last] = req.headers.equal_range(name);
    for (auto it = first; it != last; ++it) out.push_back(it->second);
    return out;
}

}  // namespace

std::optional<std::int64_t> complete_until_us(const CaptureState& s,
                                              std::int64_t now_us) noexcept {
    if (s.segment_attached && s.ring_records == 0 && s.spool_bytes == 0) {
        return now_us;
    }
    if (s.newest_committed_us == 0) return std::nullopt;
    return std::min(s.newest_committed_us, now_us);
}

Json key_json(const KeySummary& k, const SpikeRule& rule) {
    const keysql::KeyRow& r = k.key;
    return Json{{"key_id", r.key_id},
                {"name", r.name},
                {"hint", r.hint},
                {"scopes", Json::parse(r.scopes_json)},
                {"status", r.status},
                {"created_at", r.created_at},
                {"expires_at", nullable(r.expires_at)},
                {"last_used_at", nullable(r.last_used_at)},
                {"last_used_ip", nullable(r.last_used_ip)},
                {"request_count", r.request_count},
                {"requests_today", k.requests_today},
                {"requests_this_month", k.requests_this_month},
                {"dormant", r.dormant},
                {"requests_last_hour", k.requests_last_hour},
                {"baseline_hourly", k.baseline_hourly
                                        ? Json(*k.baseline_hourly)
                                        : Json(nullptr)},
                {"spike",
                 is_spike(k.requests_last_hour, k.baseline_hourly, rule)},
                {"distinct_ips_today", k.distinct_ips_today},
                {"distinct_ips_7d", k.distinct_ips_7d}};
}

Json key_usage_json(const KeySummary& key, const UsageSummary& usage,
                    const std::vector<SpikeHour>& spikes,
                    const SpikeRule& rule) {
    Json series = Json::array();
    for (const SeriesPoint& p : usage.series) {
        series.push_back({{"t", format_rfc3339(p.t_us)},
                          {"requests", p.totals.requests},
                          {"errors_4xx", p.totals.errors_4xx},
                          {"errors_5xx", p.totals.errors_5xx},
                          {"avg_ms", ms_or_null(p.totals.avg_ms())},
                          {"p95_ms", ms_or_null(p.totals.p95_ms())}});
        if (p.distinct_ips) series.back()["distinct_ips"] = *p.distinct_ips;
    }
    Json top = Json::array();
    for (const EndpointUsage& e : usage.top) {
        top.push_back({{"endpoint", e.endpoint},
                       {"method", e.method},
                       {"requests", e.totals.requests},
                       {"errors_4xx", e.totals.errors_4xx},
                       {"errors_5xx", e.totals.errors_5xx},
                       {"avg_ms", ms_or_null(e.totals.avg_ms())}});
    }
    Json spike_list = Json::array();
    for (const SpikeHour& s : spikes) {
        spike_list.push_back(
            {{"t", format_rfc3339(s.t_us)},
             {"requests", s.requests},
             {"baseline_hourly", s.baseline_hourly},
             {"ratio", s.ratio ? Json(*s.ratio) : Json(nullptr)}});
    }
    return Json{
        {"key", key_json(key, rule)},
        {"requests_today", key.requests_today},
        {"requests_this_month", key.requests_this_month},
        {"series", std::move(series)},
        {"top_endpoints", std::move(top)},
        {"error_rate",
         {{"4xx", usage.totals.rate_4xx()}, {"5xx", usage.totals.rate_5xx()}}},
        {"avg_ms", ms_or_null(usage.totals.avg_ms())},
        {"p95_ms", ms_or_null(usage.totals.p95_ms())},
        {"spikes", std::move(spike_list)}};
}

struct AnalyticsApi::Impl {
    explicit Impl(const DaemonState& s)
        : state(s),
          auth(s.config->keys_path),
          pool(s.config->db,
               static_cast<std::size_t>(s.config->api_db_sessions)) {}

    // An endpoint's 200 answer: its body, and complete_until (added last).
    struct Answer {
        Json body;
        std::optional<std::int64_t> complete_until;
    };

    DaemonState state;  // pointers into main()'s objects
    KeyTableAuth auth;
    ConnectionPool pool;
    std::mutex secret_mutex;
    std::string secret;  // "" until read

    // The caller's key: 401 (missing, malformed, unknown, revoked,
    // expired) or 503 (no key table yet).
    AuthResult authenticate(const httplib::Request& req, std::int64_t now) {
        AuthResult who =
            auth.authenticate(header_values(req, "Authorization"), now);
        if (who.status == AuthStatus::kUnavailable) {
            throw HttpError{503, "key table not available yet; retry", ""};
        }
        if (who.status != AuthStatus::kOk) {
            std::string challenge = kRealm;
            if (who.status != AuthStatus::kMissing) {
                challenge += ", error=\"invalid_token\"";
            }
            throw HttpError{401, std::string(auth_status_message(who.status)),
                            challenge};
        }
        return who;
    }

    // Steps shared by the org routes, in order: key (401/503), org id in
    // the path (400), the key's org (404), scope (403). Returns the org id.
    std::string authorize(const httplib::Request& req, std::int64_t now,
                          std::string_view org_segment,
                          std::string_view key_segment = {}) {
        AuthResult who = authenticate(req, now);
        Uuid org = parse_uuid_segment(org_segment, "org_id");
        if (!key_segment.empty()) parse_uuid_segment(key_segment, "key_id");
        if (org != who.org_id) throw HttpError{404, kNotFound, ""};
        if (!who.usage_read) {
            throw HttpError{403,
                            "missing scope " + std::string(kUsageReadScope),
                            std::string(kRealm) +
                                ", error=\"insufficient_scope\", scope=\"" +
                                std::string(kUsageReadScope) + "\""};
        }
        return uuid_to_string(org);
    }

    // Taken before any query, so that everything committed up to it is in
    // what the queries read.
    std::optional<std::int64_t> complete_until(std::int64_t now) const {
        CaptureState c;
        c.segment_attached = state.drain->segment_attached.load();
        c.spool_bytes = state.drain->spool_bytes.load();
        c.newest_committed_us = state.drain->newest_committed_us.load();
        for (const RingSnapshot& r : state.drainer->snapshot().rings) {
            c.ring_records += r.depth;
        }
        return complete_until_us(c, now);
    }

    // The secret that signs cursors, read once from the database.
    std::string cursor_secret(pg::Connection& conn) {
        std::lock_guard<std::mutex> lock(secret_mutex);
        if (secret.empty()) {
            pg::Result r = conn.exec(
                "SELECT secret FROM api_cursor_secret WHERE id = 1");
            if (r.rows() != 1) {
                throw std::runtime_error("api_cursor_secret has no secret");
            }
            secret = pg::bytea_from_text(r.get(0, 0));
        }
        return secret;
    }

    static CursorScope cursor_scope(const std::string& org,
                                    const OrgUsageParams& p) {
        return {org,
                sort_name(p.sort),
                p.descending,
                status_name(p.status),
                dormant_name(p.dormant),
                p.dormant_days,
                p.q,
                dormant_name(p.spike),
                ratio_text(p.spike_rule.ratio),
                p.spike_rule.min};
    }

    Answer org_usage(const httplib::Request& req) {
        std::int64_t now = now_us();
        std::string org = authorize(req, now, req.matches[1].str());
        OrgUsageParams p = parse_org_usage_params(parse_query(req.target));
        std::optional<std::int64_t> until = complete_until(now);

        ConnectionPool::Lease conn = pool.acquire();
        CursorScope scope = cursor_scope(org, p);
        std::string key = cursor_secret(*conn);
        std::vector<std::string> after;
        if (!p.cursor.empty()) {
            auto position = decode_cursor(key, scope, p.cursor);
            if (!position || position->size() != position_size(p.sort)) {
                throw ParamError("cursor is not valid for this listing");
            }
            after = std::move(*position);
        }
        ListingPage page =
            query_listing(*conn, org, p, after, CalendarWindow::at(now));
        Json list = Json::array();
        for (const KeySummary& k : page.keys) {
            list.push_back(key_json(k, p.spike_rule));
        }
        return {Json{{"org_id", org},
                     {"keys", std::move(list)},
                     {"next_cursor", page.next ? Json(encode_cursor(
                                                     key, scope, *page.next))
                                               : Json(nullptr)}},
                until};
    }

    Answer key_usage(const httplib::Request& req) {
        std::int64_t now = now_us();
        std::string key_segment = req.matches[2].str();
        std::string org =
            authorize(req, now, req.matches[1].str(), key_segment);
        std::string key_id =
            uuid_to_string(parse_uuid_segment(key_segment, "key_id"));
        return key_view(req, now, org, key_id);
    }

    // The caller's own key, whatever its scopes: the ids come from the key
    // alone, so no request can name another key or org.
    Answer self_usage(const httplib::Request& req) {
        std::int64_t now = now_us();
        AuthResult who = authenticate(req, now);
        std::string org = uuid_to_string(who.org_id);
        Answer a = key_view(req, now, org, uuid_to_string(who.key_id));
        // The key's org, which a holder of the key alone (the dashboard's
        // sign-in) needs for the org routes.
        a.body["key"]["org_id"] = org;
        return a;
    }

    // The per-key view of an authorized key of `org`.
    Answer key_view(const httplib::Request& req, std::int64_t now,
                    const std::string& org, const std::string& key_id) {
        QueryParams query = parse_query(req.target);
        KeyUsageParams p = parse_key_usage_params(query, now);
        // dormant_days applies to the "key" object as in the listing.
        int dormant_days = parse_dormant_days(query);
        std::optional<std::int64_t> until = complete_until(now);

        ConnectionPool::Lease conn = pool.acquire();
        // One snapshot for the key and its rows.
        conn->exec("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
        std::optional<KeySummary> key = query_key(
            *conn, org, key_id, dormant_days, CalendarWindow::at(now));
        std::vector<UsageRow> rows;
        std::vector<HourTotal> hours;
        std::map<std::int64_t, std::uint64_t> ips_by_day;
        if (key) {
            rows = query_key_usage(*conn, org, key_id, p.interval, p.from_us,
                                   p.to_us);
            hours = query_hour_totals(*conn, org, key_id,
                                      spike_window_start(p.from_us), p.to_us);
            add_distinct_ips(*conn, org, &*key, 1, CalendarWindow::at(now));
            if (p.interval == Interval::kDay) {
                ips_by_day = query_distinct_ips_by_day(*conn, org, key_id,
                                                       p.from_us, p.to_us);
            }
        }
        conn->exec("COMMIT");
        if (!key) throw HttpError{404, kNotFound, ""};

        UsageSummary usage = summarize_usage(
            rows, series_buckets(p.from_us, p.to_us, p.interval), p.top);
        if (p.interval == Interval::kDay) {
            fill_distinct_ips(&usage.series, ips_by_day);
        }
        // Hours, whatever the interval: the rule is hourly.
        std::int64_t created = parse_time(key->key.created_at).value_or(0);
        std::vector<SpikeHour> spikes = find_spikes(
            hours, created, p.from_us, p.to_us, now, p.spike_rule);
        return {key_usage_json(*key, usage, spikes, p.spike_rule), until};
    }

    // The export's transaction and cursor, and the session they use (the
    // cursor goes first).
    struct ExportStream {
        explicit ExportStream(ConnectionPool::Lease l) : lease(std::move(l)) {}
        ConnectionPool::Lease lease;
        std::optional<ExportCursor> cursor;
    };

    // Checks and opens everything before the first byte, so that each
    // failure still gets its status; then streams the lines, a FETCH at a
    // time, at the pace the client reads.
    void export_usage(const httplib::Request& req, httplib::Response& res) {
        std::int64_t now = now_us();
        std::string org = authorize(req, now, req.matches[1].str());
        ExportParams p = parse_export_params(parse_query(req.target), now);
        auto stream = std::make_shared<ExportStream>(pool.acquire());
        stream->cursor.emplace(*stream->lease, org, p);
        res.set_header("Cache-Control", "no-store");
        res.set_header("X-Content-Type-Options", "nosniff");
        stream_body(req, res, export_content_type(p.format),
                    [stream](const BodyWriter& write) {
                        std::string lines;
                        try {
                            for (bool more = true; more;) {
                                more = stream->cursor->next(&lines);
                                if (!write(lines)) return false;
                                lines.clear();
                            }
                        } catch (const std::exception& e) {
                            log_warn(std::string("api: export cut short: ") +
                                     e.what());
                            return false;
                        }
                        return true;
                    });
    }

    // Runs one endpoint and turns every failure into its JSON answer.
    template <typename Fn>
    void serve(const httplib::Request& req, httplib::Response& res, Fn fn) {
        guarded(res, [&] {
            Answer a = (this->*fn)(req);
            // The tag covers the data, not complete_until (which moves
            // with the clock): a poll of unchanged data gets a 304.
            std::string tag = entity_tag(dump(a.body));
            res.set_header("ETag", tag);
            if (none_match_hits(header_values(req, "If-None-Match"), tag)) {
                res.status = 304;
                res.set_header("Cache-Control", "no-store");
                return;
            }
            a.body["complete_until"] = time_or_null(a.complete_until);
            send(res, 200, a.body);
        });
    }

    // Runs `step`, which answers, and turns every failure into its JSON
    // answer. A step that fails for want of a connection is run once more
    // on a fresh session: pooled ones die silently when PostgreSQL
    // restarts.
    template <typename Step>
    void guarded(httplib::Response& res, Step step) {
        for (int attempt = 0;; ++attempt) {
            try {
                step();
                return;
            } catch (const HttpError& e) {
                if (!e.www_authenticate.empty()) {
                    res.set_header("WWW-Authenticate", e.www_authenticate);
                }
                if (e.status == 503) res.set_header("Retry-After", "1");
                send(res, e.status, {{"error", e.message}});
            } catch (const ParamError& e) {
                send(res, 400, {{"error", e.what()}});
            } catch (const pg::Error& e) {
                if (!connection_lost(e)) {
                    database_error(res, e);
                } else {
                    pool.discard_idle();
                    if (attempt == 0) continue;
                    log_warn(std::string("api: database unavailable: ") +
                             e.what());
                    res.set_header("Retry-After", "1");
                    send(res, 503, {{"error", "database unavailable"}});
                }
            } catch (const PoolExhausted& e) {
                log_warn(std::string("api: ") + e.what());
                res.set_header("Retry-After", "1");
                send(res, 503, {{"error", "database sessions busy; retry"}});
            } catch (const std::exception& e) {
                log_error(std::string("api: ") + e.what());
                send(res, 500, {{"error", "internal error"}});
            }
            return;
        }
    }

    // No SQLSTATE (libpq could not connect, or lost the connection), class
    // 08 (connection exception) or 57P0x (server shutting down, cannot
    // connect now).
    static bool connection_lost(const pg::Error& e) {
        const std::string& state = e.sqlstate();
        return state.empty() || state.rfind("08", 0) == 0 ||
               state.rfind("57P", 0) == 0;
    }

    // 57014 (statement_timeout) is worth a retry later: 503. Anything else
    // is a bug or a schema mismatch: 500, logged.
    static void database_error(httplib::Response& res, const pg::Error& e) {
        if (e.sqlstate() == "57014") {
            log_warn(std::string("api: query timed out: ") + e.what());
            res.set_header("Retry-After", "1");
            send(res, 503, {{"error", "query timed out"}});
            return;
        }
        log_error("api: database error " + e.sqlstate() + ": " + e.what());
        send(res, 500, {{"error", "internal error"}});
    }
};

AnalyticsApi::AnalyticsApi(const DaemonState& state)
    : impl_(std::make_unique<Impl>(state)) {}

AnalyticsApi::~AnalyticsApi() = default;

void AnalyticsApi::add_routes(httplib::Server& server) {
    Impl* impl = impl_.get();
    server.Get(kOrgRoute,
               [impl](const httplib::Request& req, httplib::Response& res) {
                   impl->serve(req, res, &Impl::org_usage);
               });
    server.Get(kKeyRoute,
               [impl](const httplib::Request& req, httplib::Response& res) {
                   impl->serve(req, res, &Impl::key_usage);
               });
    server.Get(kExportRoute,
               [impl](const httplib::Request& req, httplib::Response& res) {
                   impl->guarded(res, [&] { impl->export_usage(req, res); });
               });
    server.Get(kSelfRoute,
               [impl](const httplib::Request& req, httplib::Response& res) {
                   impl->serve(req, res, &Impl::self_usage);
               });
}

}  // namespace apikey::api
