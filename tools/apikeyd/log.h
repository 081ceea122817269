// apikeyd's log: one line per event on stderr, with a UTC timestamp and a
// level. Callers pass only ids, counts and reasons: never a key or a hash.
#pragma once

#include <string>

namespace apikey {

enum class LogLevel { kDebug = 0, kInfo, kWarn, kError };

void set_log_level(LogLevel level);
void log_line(LogLevel level, const std::string& message);

inline void log_debug(const std::string& m) { log_line(LogLevel::kDebug, m); }
inline void log_info(const std::string& m) { log_line(LogLevel::kInfo, m); }
inline void log_warn(const std::string& m) { log_line(LogLevel::kWarn, m); }
inline void log_error(const std::string& m) { log_line(LogLevel::kError, m); }

}  // namespace apikey
