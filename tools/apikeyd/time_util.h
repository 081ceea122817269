// Wall-clock time in microseconds since the Unix epoch, the unit of the key
// table and usage records.
#pragma once

#include <chrono>
#include <cstdint>

namespace apikey {

inline std::int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace apikey
