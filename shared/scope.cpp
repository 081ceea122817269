#include "scope.h"

namespace apikey {
namespace {

constexpr std::uint64_t kFnvOffsetBasis = 0xcbf29ce484222325ULL;
constexpr std::uint64_t kFnvPrime = 0x100000001b3ULL;

bool lower_alnum(char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

}  // namespace

bool scope_is_valid(std::string_view scope) noexcept {
    if (scope.empty() || scope.size() > kMaxScopeLen ||
        !lower_alnum(scope[0])) {
        return false;
    }
    for (char c : scope.substr(1)) {
        if (!lower_alnum(c) && c != ':' && c != '.' && c != '_' && c != '-') {
            return false;
        }
    }
    return true;
}

std::uint64_t scope_hash(std::string_view scope) noexcept {
    std::uint64_t h = kFnvOffsetBasis;
    for (char c : scope) {
        h ^= static_cast<unsigned char>(c);
        h *= kFnvPrime;
    }
    return h;
}

}  // namespace apikey
