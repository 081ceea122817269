#include "analytics_etag.h"

#include <openssl/evp.h>

#include <array>
#include <stdexcept>

namespace apikey::api {

std::string entity_tag(std::string_view content) {
    std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
    unsigned int len = 0;
    if (!EVP_Digest(content.data(), content.size(), md.data(), &len,
                    EVP_sha256(), nullptr)) {
        throw std::runtime_error("SHA-256 failed");
    }
    static constexpr char kHex[] = "0123456789abcdef";
    std::string tag = "\"";
    for (unsigned int i = 0; i < 16 && i < len; ++i) {
        tag.push_back(kHex[md[i] >> 4]);
        tag.push_back(kHex[md[i] & 15]);
    }
    tag.push_back('"');
    return tag;
}

bool none_match_hits(const std::vector<std::string>& if_none_match,
                     std::string_view tag) {
    for (const std::string& value : if_none_match) {
        std::string_view rest = value;
        while (!rest.empty()) {
            std::size_t comma = rest.find(',');
            std::string_view item = rest.substr(0, comma);
            rest = comma == std::string_view::npos ? std::string_view{}
                                                   : rest.substr(comma + 1);
            while (!item.empty() && (item.front() == ' ' || item.front() == '\t'))
                item.remove_prefix(1);
            while (!item.empty() && (item.back() == ' ' || item.back() == '\t'))
                item.remove_suffix(1);
            if (item == "*") return true;
            if (item.substr(0, 2) == "W/") item.remove_prefix(2);
            if (item == tag) return true;
        }
    }
    return false;
}

}  // namespace apikey::api
