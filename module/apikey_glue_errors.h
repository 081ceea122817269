// Shared by the glue files: copying an error message into the C caller's
// buffer without throwing.
#pragma once

#include <cstddef>
#include <cstring>
#include <string>

namespace apikey {

inline void copy_error(const std::string& what, char* err,
                       std::size_t err_len) noexcept {
    if (err == nullptr || err_len == 0) {
        return;
    }
    std::size_t n = what.size() < err_len - 1 ? what.size() : err_len - 1;
    std::memcpy(err, what.data(), n);
    err[n] = '\0';
}

}  // namespace apikey
