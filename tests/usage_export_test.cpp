// The export line: columns, order, CSV quoting and NDJSON fields.
#include "usage_export.h"

#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

namespace apikey::api {
namespace {

ExportRow sample() {
    ExportRow r;
    r.bucket_us = 1709251200LL * 1000000;  // 2024-03-01T00:00:00Z
    r.key_id = "0b6f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4";
    r.key_name = "billing";
    r.endpoint = "/orders";
    r.method = "GET";
    r.requests = 3;
    r.status_2xx = 1;
    r.status_3xx = 0;
    r.status_4xx = 1;
    r.status_5xx = 0;
    r.status_other = 1;
    r.response_time_ms_sum = 10.0;
    r.latency_hist.add(40, 3);
    return r;
}

TEST(UsageExport, CsvFieldQuotesOnlyWhatNeedsIt) {
    EXPECT_EQ(csv_field("/orders"), "/orders");
    EXPECT_EQ(csv_field(""), "");
    EXPECT_EQ(csv_field("a,b"), "\"a,b\"");
    EXPECT_EQ(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    EXPECT_EQ(csv_field("two\nlines"), "\"two\nlines\"");
    // Cells a spreadsheet would run as formulas are made text.
    EXPECT_EQ(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
    EXPECT_EQ(csv_field("+1"), "'+1");
    EXPECT_EQ(csv_field("-2"), "'-2");
    EXPECT_EQ(csv_field("@SUM(A1)"), "'@SUM(A1)");
    EXPECT_EQ(csv_field("\tx"), "'\tx");
    EXPECT_EQ(csv_field("\rx"), "\"'\rx\"");
    EXPECT_EQ(csv_field("a=b"), "a=b");
    EXPECT_EQ(csv_field("cr\rhere"), "\"cr\rhere\"");
    EXPECT_EQ(csv_field("\""), "\"\"\"\"");
}

TEST(UsageExport, CsvHeaderNamesTheColumnsInOrder) {
    EXPECT_EQ(export_header(ExportFormat::kCsv),
              "bucket,key_id,key_name,endpoint,method,requests,status_2xx,"
              "status_3xx,status_4xx,status_5xx,status_other,"
              "response_time_ms_sum,avg_ms,p95_ms\n");
    EXPECT_EQ(export_header(ExportFormat::kNdjson), "");
}

TEST(UsageExport, CsvLine) {
    ExportRow r = sample();
    r.key_name = "team, \"ops\"";
    r.endpoint = "a\nb";
    std::string line;
    append_export_line(r, ExportFormat::kCsv, &line);
    std::string p95 = nlohmann::json(
                          std::round(*latency_percentile_ms(r.latency_hist,
                                                            0.95) *
                                     1000.0) /
                          1000.0)
                          .dump();
    EXPECT_EQ(line,
              "2024-03-01T00:00:00Z,0b6f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4,"
              "\"team, \"\"ops\"\"\",\"a\nb\",GET,3,1,0,1,0,1,10.0,3.333," +
                  p95 + "\n");
}

TEST(UsageExport, NdjsonLineHasTheCsvColumnsAsFields) {
    std::string line;
    append_export_line(sample(), ExportFormat::kNdjson, &line);
    ASSERT_EQ(line.back(), '\n');
    EXPECT_EQ(line.find('\n'), line.size() - 1);
    auto j = nlohmann::ordered_json::parse(line);
    std::vector<std::string> keys;
    for (auto& [k, v] : j.items()) keys.push_back(k);
    EXPECT_EQ(keys, (std::vector<std::string>{
                        "bucket", "key_id", "key_name", "endpoint", "method",
                        "requests", "status_2xx", "status_3xx", "status_4xx",
                        "status_5xx", "status_other", "response_time_ms_sum",
                        "avg_ms", "p95_ms"}));
    EXPECT_EQ(j["bucket"], "2024-03-01T00:00:00Z");
    EXPECT_EQ(j["requests"], 3);
    EXPECT_EQ(j["status_other"], 1);
    EXPECT_DOUBLE_EQ(j["avg_ms"].get<double>(), 3.333);
    EXPECT_TRUE(j["p95_ms"].is_number());
}

TEST(UsageExport, NoRequestsMeansNoAverageOrPercentile) {
    ExportRow r = sample();
    r.requests = r.status_2xx = r.status_4xx = r.status_other = 0;
    r.response_time_ms_sum = 0;
    r.latency_hist = LatencyHistogram();
    std::string csv, nd;
    append_export_line(r, ExportFormat::kCsv, &csv);
    append_export_line(r, ExportFormat::kNdjson, &nd);
    EXPECT_EQ(csv.substr(csv.size() - 9), ",0,0.0,,\n");
    auto j = nlohmann::json::parse(nd);
    EXPECT_TRUE(j["avg_ms"].is_null());
    EXPECT_TRUE(j["p95_ms"].is_null());
}

TEST(UsageExport, NdjsonReplacesInvalidUtf8InsteadOfThrowing) {
    ExportRow r = sample();
    r.endpoint = std::string("bad\xff", 4);
    std::string line;
    append_export_line(r, ExportFormat::kNdjson, &line);
    EXPECT_EQ(nlohmann::json::parse(line)["endpoint"], "bad\xef\xbf\xbd");
}

}  // namespace
}  // namespace apikey::api
