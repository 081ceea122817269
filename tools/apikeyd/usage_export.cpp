#include "usage_export.h"

#include <nlohmann/json.hpp>
#include <optional>

namespace apikey::api {
namespace {

using Json = nlohmann::ordered_json;

constexpr const char* kCursor = "apikey_export";

// Milliseconds as the API's JSON prints them; one text for both formats.
Json ms_json(std::optional<double> ms) {
    return ms ? Json(round_ms(*ms)) : Json(nullptr);
}

std::string dump(const Json& j) {
    return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string declare_sql(Interval interval) {
    return std::string(
               "DECLARE ") + kCursor + std::string(" NO SCROLL CURSOR FOR"
               " SELECT (extract(epoch FROM u.bucket) * 1000000)::bigint,"
               " u.key_id, k.name, u.endpoint, u.method, u.requests,"
               " u.status_2xx, u.status_3xx, u.status_4xx, u.status_5xx,"
               " u.status_other, u.response_time_ms_sum, u.latency_hist"
               " FROM ") +
           (interval == Interval::kHour ? "api_key_usage_hourly"
                                        : "api_key_usage_daily") +
           " u JOIN api_keys k ON k.id = u.key_id AND k.org_id = u.org_id"
           " WHERE u.org_id = $1::uuid AND u.bucket >= $2::timestamptz"
           " AND u.bucket < $3::timestamptz"
           " ORDER BY u.bucket, u.key_id, u.endpoint, u.method";
}

ExportRow read_row(const pg::Result& r, int i) {
    ExportRow row;
    row.bucket_us = std::stoll(r.get(i, 0));
    row.key_id = r.get(i, 1);
    row.key_name = r.get(i, 2);
    row.endpoint = r.get(i, 3);
    row.method = r.get(i, 4);
    row.requests = r.get_u64(i, 5);
    row.status_2xx = r.get_u64(i, 6);
    row.status_3xx = r.get_u64(i, 7);
    row.status_4xx = r.get_u64(i, 8);
    row.status_5xx = r.get_u64(i, 9);
    row.status_other = r.get_u64(i, 10);
    row.response_time_ms_sum = std::stod(r.get(i, 11));
    if (!row.latency_hist.add_pg_array(r.get(i, 12))) {
        throw std::runtime_error("stored latency_hist is not a histogram");
    }
    return row;
}

}  // namespace

std::string export_header(ExportFormat format) {
    if (format != ExportFormat::kCsv) return "";
    return "bucket,key_id,key_name,endpoint,method,requests,status_2xx,"
           "status_3xx,status_4xx,status_5xx,status_other,"
           "response_time_ms_sum,avg_ms,p95_ms\n";
}

const char* export_content_type(ExportFormat format) {
    return format == ExportFormat::kCsv ? "text/csv; charset=utf-8"
                                        : "application/x-ndjson";
}

std::string csv_field(std::string_view text) {
    // A spreadsheet runs a cell that starts with one of these as a formula,
    // and endpoints come from request paths anyone can send: a leading
    // apostrophe makes the cell text again (what OWASP advises).
    const bool formula_like =
        !text.empty() && std::string_view("=+-@\t\r").find(text.front()) !=
                             std::string_view::npos;
    const std::string_view lead = formula_like ? "'" : "";
    std::string out;
    if (text.find_first_of(",\"\r\n") == std::string_view::npos) {
        out.append(lead).append(text);
        return out;
    }
    out.append("\"").append(lead);
    for (char c : text) {
        if (c == '"') out += '"';
        out += c;
    }
    out += '"';
    return out;
}

void append_export_line(const ExportRow& row, ExportFormat format,
                        std::string* out) {
    std::optional<double> avg, p95;
    if (row.requests > 0) {
        avg = row.response_time_ms_sum / static_cast<double>(row.requests);
        p95 = latency_percentile_ms(row.latency_hist, 0.95);
    }
    std::string bucket = format_rfc3339(row.bucket_us);
    Json sum = ms_json(row.response_time_ms_sum);
    Json avg_json = ms_json(avg);
    Json p95_json = ms_json(p95);
    if (format == ExportFormat::kNdjson) {
        // Written field by field: a json object per line would cost more
        // than the rest of the export together. Text goes through the JSON
        // string escaper.
        auto text = [](std::string_view v) { return dump(Json(v)); };
        *out += "{\"bucket\":\"" + bucket + "\",\"key_id\":\"" + row.key_id +
                "\",\"key_name\":" + text(row.key_name) +
                ",\"endpoint\":" + text(row.endpoint) +
                ",\"method\":" + text(row.method) +
                ",\"requests\":" + std::to_string(row.requests) +
                ",\"status_2xx\":" + std::to_string(row.status_2xx) +
                ",\"status_3xx\":" + std::to_string(row.status_3xx) +
                ",\"status_4xx\":" + std::to_string(row.status_4xx) +
                ",\"status_5xx\":" + std::to_string(row.status_5xx) +
                ",\"status_other\":" + std::to_string(row.status_other) +
                ",\"response_time_ms_sum\":" + dump(sum) +
                ",\"avg_ms\":" + dump(avg_json) + ",\"p95_ms\":" + dump(p95_json) +
                "}\n";
        return;
    }
    auto number = [](const Json& j) {
        return j.is_null() ? std::string() : dump(j);
    };
    for (const std::string& field :
         {bucket, row.key_id, csv_field(row.key_name), csv_field(row.endpoint),
          csv_field(row.method), std::to_string(row.requests),
          std::to_string(row.status_2xx), std::to_string(row.status_3xx),
          std::to_string(row.status_4xx), std::to_string(row.status_5xx),
          std::to_string(row.status_other), number(sum), number(avg_json)}) {
        *out += field;
        *out += ',';
    }
    *out += number(p95_json);
    *out += '\n';
}

ExportCursor::ExportCursor(pg::Connection& conn, const std::string& org_id,
                           const ExportParams& p)
    : conn_(conn), format_(p.format) {
    conn_.exec("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    try {
        conn_.exec(declare_sql(p.interval),
                   {org_id, format_rfc3339(p.from_us, TimePrecision::kMicros),
                    format_rfc3339(p.to_us, TimePrecision::kMicros)});
    } catch (...) {
        PQclear(PQexec(conn_.get(), "ROLLBACK"));
        throw;
    }
}

ExportCursor::~ExportCursor() {
    // Abandoned (the reader went away, or an error): nothing to keep.
    if (open_) PQclear(PQexec(conn_.get(), "ROLLBACK"));
}

bool ExportCursor::next(std::string* out) {
    if (!open_) return false;
    if (!header_done_) {
        *out += export_header(format_);
        header_done_ = true;
    }
    static const std::string fetch =
        "FETCH " + std::to_string(kExportFetchRows) + " FROM " + kCursor;
    pg::Result r = conn_.exec(fetch);
    for (int i = 0; i < r.rows(); ++i) {
        append_export_line(read_row(r, i), format_, out);
    }
    if (r.rows() < kExportFetchRows) {
        conn_.exec("COMMIT");
        open_ = false;
    }
    return open_;
}

}  // namespace apikey::api
