#include "ring_owners.h"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

namespace apikey {
namespace {

constexpr std::int64_t kClaimAfterStartUs = 60 * 1000000LL;
constexpr std::int64_t kClockSlackUs = 2 * 1000000LL;

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

std::optional<std::uint64_t> to_u64(std::string_view s) {
    if (s.empty() || s.size() > 19) return std::nullopt;
    std::uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return v;
}

// Boot time from /proc/stat ("btime <seconds>"), as µs since the epoch.
std::optional<std::int64_t> boot_time_us() {
    std::string stat = read_file("/proc/stat");
    std::size_t at = stat.find("\nbtime ");
    if (at == std::string::npos) return std::nullopt;
    at += 7;
    std::size_t end = stat.find('\n', at);
    auto secs = to_u64(std::string_view(stat).substr(at, end - at));
    if (!secs) return std::nullopt;
    return static_cast<std::int64_t>(*secs) * 1000000;
}

std::optional<std::int64_t> process_start_us(std::int32_t pid) {
    auto ticks =
        parse_start_ticks(read_file("/proc/" + std::to_string(pid) + "/stat"));
    auto boot = boot_time_us();
    long hz = sysconf(_SC_CLK_TCK);
    if (!ticks || !boot || hz <= 0) return std::nullopt;
    return *boot + static_cast<std::int64_t>(*ticks * 1000000 /
                                             static_cast<std::uint64_t>(hz));
}

}  // namespace

std::vector<std::int32_t> parse_nspid(std::string_view status) {
    std::vector<std::int32_t> pids;
    std::size_t at = status.rfind("\nNSpid:");
    if (at == std::string_view::npos) return pids;
    std::size_t end = status.find('\n', at + 1);
    std::string_view line = status.substr(at + 7, end == std::string_view::npos
                                                      ? std::string_view::npos
                                                      : end - at - 7);
    std::size_t i = 0;
    while (i < line.size()) {
        while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
        std::size_t j = i;
        while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
        if (j > i) {
            auto v = to_u64(line.substr(i, j - i));
            if (!v || *v > 0x7fffffff) return {};
            pids.push_back(static_cast<std::int32_t>(*v));
        }
        i = j;
    }
    return pids;
}

std::optional<std::uint64_t> parse_start_ticks(std::string_view stat) {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses,
    // so count fields after the last ')'. starttime is field 22.
    std::size_t close = stat.rfind(')');
    if (close == std::string_view::npos) return std::nullopt;
    std::size_t i = close + 1;
    for (int field = 3; i < stat.size(); ++field) {
        while (i < stat.size() && stat[i] == ' ') ++i;
        std::size_t j = i;
        while (j < stat.size() && stat[j] != ' ' && stat[j] != '\n') ++j;
        if (field == 22) return to_u64(stat.substr(i, j - i));
        i = j;
    }
    return std::nullopt;
}

bool started_at_claim(std::int64_t start_us, std::int64_t claimed_at_us) {
    return start_us <= claimed_at_us + kClockSlackUs &&
           start_us >= claimed_at_us - kClaimAfterStartUs;
}

bool process_exists(std::int32_t pid) {
    return pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH);
}

bool owner_seen_here(std::int32_t pid, std::int64_t claimed_at_us) {
    if (!process_exists(pid)) return false;
    std::vector<std::int32_t> ns = parse_nspid(
        read_file("/proc/" + std::to_string(pid) + "/status"));
    // One entry: the process lives in the namespace of our /proc.
    if (ns.size() != 1 || ns[0] != pid) return false;
    auto start = process_start_us(pid);
    return start && started_at_claim(*start, claimed_at_us);
}

bool pid_used_in_nested_namespace(std::int32_t pid) {
    DIR* d = opendir("/proc");
    if (d == nullptr) return true;  // cannot tell: assume the worst
    bool found = false;
    while (dirent* e = readdir(d)) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        std::vector<std::int32_t> ns = parse_nspid(
            read_file(std::string("/proc/") + e->d_name + "/status"));
        for (std::size_t i = 1; i < ns.size(); ++i) {
            if (ns[i] == pid) found = true;
        }
        if (found) break;
    }
    closedir(d);
    return found;
}

}  // namespace apikey
