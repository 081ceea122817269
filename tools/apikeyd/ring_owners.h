// Whether the worker that owns a ring is gone, so that apikeyd may retire
// the ring. A ring records its owner's pid as the worker saw it, and a pid
// names a process only within one PID namespace: when nginx runs in
// another namespace than apikeyd (a container), "no such process" here says
// nothing about the worker, and retiring its live ring would hand it to a
// second producer.
//
// The rule: apikeyd retires a ring by pid only once it has seen, for that
// segment, a ring owner alive in its own namespace and started when it
// claimed its ring (so the pid is that worker's, not a stranger's that
// happens to match), and only when no process in a namespace nested in
// apikeyd's has the dead owner's pid as its own.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace apikey {

// The pids in the "NSpid:" line of /proc/PID/status, outermost first (the
// namespace of the /proc mount); empty when there is no such line.
std::vector<std::int32_t> parse_nspid(std::string_view status);

// Field 22 (starttime, clock ticks after boot) of /proc/PID/stat.
std::optional<std::uint64_t> parse_start_ticks(std::string_view stat);

// A process started at `start_us` can be the worker that claimed a ring at
// `claimed_at_us`: workers claim as they start (slack for the second-wide
// boot time and a slow start under valgrind).
bool started_at_claim(std::int64_t start_us, std::int64_t claimed_at_us);

// --- /proc -------------------------------------------------------------------

// A process with this pid exists in apikeyd's namespace (or one nested
// in it): kill(pid, 0) does not say ESRCH.
bool process_exists(std::int32_t pid);

// The process `pid` exists in apikeyd's namespace (not a nested one) and
// started when the ring was claimed.
bool owner_seen_here(std::int32_t pid, std::int64_t claimed_at_us);

// Some process in a PID namespace nested in apikeyd's has `pid` as its own.
bool pid_used_in_nested_namespace(std::int32_t pid);

}  // namespace apikey
