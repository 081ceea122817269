// Analytics API load client for tools/bench/query: N clients, each on its
// own keep-alive connection (as a dashboard tab), send requests picked at
// random from a plan until a deadline or a request count; listing pages
// follow their next_cursor with a given probability. Meanwhile one more
// connection polls /healthz. Prints p50/p99/max and errors per request
// kind, the answers per second, and /healthz's latencies.
//
//   bench_query_load PORT PLAN CLIENTS SECONDS|xCOUNT FOLLOW MAX_PAGES
//
// PLAN: lines "<kind> <bearer key> <path>"; a kind starting with "list"
// is a listing (its cursor pages are counted as "<kind>+next"). SECONDS
// runs for that long; "x100" sends 100 requests per client instead.
// FOLLOW: probability (0..1) of following a next_cursor; MAX_PAGES bounds
// one walk. Exit status 1 when any answer was not a 200.

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct PlanLine {
    std::string kind;
    std::string key;
    std::string path;
};

struct Stats {
    std::vector<double> ms;
    std::map<int, long> errors;  // status (0: no answer) -> count
};

std::mutex g_mutex;
std::map<std::string, Stats> g_stats;

double since_ms(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

void record(const std::string& kind, double ms, int status) {
    std::lock_guard<std::mutex> lock(g_mutex);
    Stats& s = g_stats[kind];
    if (status == 200) {
        s.ms.push_back(ms);
    } else {
        ++s.errors[status];
    }
}

std::string url_escape(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out.push_back(static_cast<char>(c));
        } else {
            char buf[4];
            std::snprintf(buf, sizeof buf, "%%%02X", c);
            out += buf;
        }
    }
    return out;
}

double rank(std::vector<double>& v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    std::size_t i = static_cast<std::size_t>(q * static_cast<double>(v.size()));
    if (static_cast<double>(i) < q * static_cast<double>(v.size())) ++i;
    return v[std::min(v.size() - 1, i == 0 ? 0 : i - 1)];
}

void client(int port, const std::vector<PlanLine>& plan, Clock::time_point end,
            long count, double follow, int max_pages, unsigned seed) {
    httplib::Client http("127.0.0.1", port);
    http.set_keep_alive(true);
    http.set_read_timeout(30, 0);
    std::mt19937 rng(seed);
    std::uniform_int_distribution<std::size_t> pick(0, plan.size() - 1);
    std::uniform_real_distribution<double> coin(0, 1);
    const PlanLine* line = nullptr;
    std::string cursor;
    int pages = 0;
    for (long n = 0; count > 0 ? n < count : Clock::now() < end; ++n) {
        if (cursor.empty()) {
            line = &plan[pick(rng)];
            pages = 0;
        }
        std::string path = line->path;
        std::string kind = line->kind;
        if (!cursor.empty()) {
            path += (path.find('?') == std::string::npos ? "?" : "&");
            path += "cursor=" + url_escape(cursor);
            kind += "+next";
        }
        httplib::Headers h = {{"Authorization", "Bearer " + line->key}};
        auto t0 = Clock::now();
        auto res = http.Get(path, h);
        double ms = since_ms(t0);
        int status = res ? res->status : 0;
        record(kind, ms, status);
        cursor.clear();
        if (status == 200 && line->kind.rfind("list", 0) == 0 &&
            ++pages < max_pages && coin(rng) < follow) {
            auto j = nlohmann::json::parse(res->body, nullptr, false);
            if (j.is_object() && j["next_cursor"].is_string()) {
                cursor = j["next_cursor"].get<std::string>();
            }
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 7) {
        std::fprintf(stderr,
                     "usage: bench_query_load PORT PLAN CLIENTS SECONDS|xCOUNT "
                     "FOLLOW MAX_PAGES\n");
        return 2;
    }
    int port = std::atoi(argv[1]);
    std::vector<PlanLine> plan;
    std::ifstream in(argv[2]);
    for (std::string text; std::getline(in, text);) {
        std::istringstream words(text);
        PlanLine l;
        if (words >> l.kind >> l.key >> l.path) plan.push_back(l);
    }
    if (plan.empty()) {
        std::fprintf(stderr, "bench_query_load: empty plan\n");
        return 2;
    }
    int clients = std::atoi(argv[3]);
    std::string span = argv[4];
    long count = span[0] == 'x' ? std::atol(span.c_str() + 1) : 0;
    double seconds = count > 0 ? 0 : std::atof(span.c_str());
    double follow = std::atof(argv[5]);
    int max_pages = std::atoi(argv[6]);

    auto t0 = Clock::now();
    auto end = t0 + std::chrono::milliseconds(
                        static_cast<long>(seconds * 1000));
    std::atomic<bool> done{false};
    std::vector<double> health;
    long health_errors = 0;
    std::thread prober([&] {
        httplib::Client http("127.0.0.1", port);
        http.set_keep_alive(true);
        while (!done.load()) {
            auto p0 = Clock::now();
            auto res = http.Get("/healthz");
            double ms = since_ms(p0);
            if (res && res->status == 200) {
                health.push_back(ms);
            } else {
                ++health_errors;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    });
    std::vector<std::thread> threads;
    for (int i = 0; i < clients; ++i) {
        threads.emplace_back(client, port, std::cref(plan), end, count, follow,
                             max_pages, 1234u + static_cast<unsigned>(i));
    }
    for (auto& t : threads) t.join();
    double wall_s = since_ms(t0) / 1000;
    done = true;
    prober.join();

    long answers = 0, errors = 0;
    std::vector<double> all;
    for (auto& [kind, s] : g_stats) {
        long e = 0;
        std::string detail;
        for (auto& [status, n] : s.errors) {
            e += n;
            detail += " " + std::to_string(n) + "x" + std::to_string(status);
        }
        answers += static_cast<long>(s.ms.size());
        errors += e;
        all.insert(all.end(), s.ms.begin(), s.ms.end());
        std::printf(
            "%-36s n=%-6zu p50 %8.2f ms  p99 %8.2f ms  max %8.2f ms  "
            "errors %ld%s\n",
            kind.c_str(), s.ms.size(), rank(s.ms, 0.50), rank(s.ms, 0.99),
            s.ms.empty() ? 0 : *std::max_element(s.ms.begin(), s.ms.end()), e,
            detail.c_str());
    }
    std::printf(
        "%-36s n=%-6zu p50 %8.2f ms  p99 %8.2f ms  max %8.2f ms  errors %ld"
        "  (%.0f answers/s, %d clients, %.1f s)\n",
        "all", all.size(), rank(all, 0.50), rank(all, 0.99),
        all.empty() ? 0 : *std::max_element(all.begin(), all.end()), errors,
        static_cast<double>(answers) / wall_s, clients, wall_s);
    std::printf("%-36s n=%-6zu p50 %8.2f ms  p99 %8.2f ms  max %8.2f ms  "
                "errors %ld\n",
                "/healthz meanwhile", health.size(), rank(health, 0.50),
                rank(health, 0.99),
                health.empty()
                    ? 0
                    : *std::max_element(health.begin(), health.end()),
                health_errors);
    return errors == 0 && health_errors == 0 ? 0 : 1;
}
