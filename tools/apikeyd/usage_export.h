// The usage export: one line per key x endpoint x method x bucket of the
// hourly or daily rollup, as CSV or NDJSON. One definition for apikeyd's
// GET /api/orgs/{org_id}/api-keys/usage/export and `apikeyctl usage
// export`, so both print the same bytes for the same rows (docs/api.md
// lists the columns).
//
// Read through a server-side cursor, a batch at a time, so memory stays
// constant whatever the range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "api_params.h"
#include "pg.h"
#include "rollup.h"

namespace apikey::api {

// Rows per FETCH.
inline constexpr int kExportFetchRows = 1000;

// One rollup row with its key's name.
struct ExportRow {
    std::int64_t bucket_us = 0;
    std::string key_id;
    std::string key_name;
    std::string endpoint;
    std::string method;
    std::uint64_t requests = 0;
    std::uint64_t status_2xx = 0;
    std::uint64_t status_3xx = 0;
    std::uint64_t status_4xx = 0;
    std::uint64_t status_5xx = 0;
    std::uint64_t status_other = 0;
    double response_time_ms_sum = 0;
    LatencyHistogram latency_hist;
};

// The CSV header line ("bucket,key_id,...\n"); "" for NDJSON.
std::string export_header(ExportFormat format);
// The MIME type of an export in `format`.
const char* export_content_type(ExportFormat format);
// Appends the row's line, '\n'-terminated, to *out. Times are RFC 3339 UTC
// seconds; milliseconds are rounded to the microsecond; avg_ms and p95_ms
// are null (NDJSON) or empty (CSV) without requests.
void append_export_line(const ExportRow& row, ExportFormat format,
                        std::string* out);
// A CSV field (RFC 4180): quoted, with quotes doubled, when it holds a
// comma, a quote, CR or LF; as is otherwise.
std::string csv_field(std::string_view text);

// The org's rollup rows with from <= bucket < to, ordered by bucket, key
// id, endpoint and method, in one READ ONLY REPEATABLE READ transaction
// on `conn` (which must be outside one): begun by the constructor, ended
// by the last next() or by the destructor. Throws pg::Error.
class ExportCursor {
   public:
    ExportCursor(pg::Connection& conn, const std::string& org_id,
                 const ExportParams& params);
    ~ExportCursor();
    ExportCursor(const ExportCursor&) = delete;
    ExportCursor& operator=(const ExportCursor&) = delete;

    // Appends the header (first call) and the lines of up to
    // kExportFetchRows more rows to *out; true while more may follow,
    // false once every row is out (the transaction is then committed).
    bool next(std::string* out);

   private:
    pg::Connection& conn_;
    ExportFormat format_;
    bool header_done_ = false;
    bool open_ = true;
};

}  // namespace apikey::api
