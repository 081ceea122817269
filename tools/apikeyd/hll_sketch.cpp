#include "hll_sketch.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace apikey {
namespace {

// Bits of the hash below the register index: values go up to kQ + 1.
constexpr int kQ = 64 - kHllPrecision;
constexpr std::uint8_t kSparse = 1;
constexpr std::uint8_t kDense = 2;
constexpr std::size_t kSparseMax = kHllRegisters / 3;

// sigma and tau of Ertl's estimator (section 4).
double sigma(double x) {
    if (x == 1.0) return std::numeric_limits<double>::infinity();
    double y = 1.0;
    double z = x;
    for (;;) {
        x *= x;
        const double before = z;
        z += x * y;
        y += y;
        if (z == before) return z;
    }
}

double tau(double x) {
    if (x == 0.0 || x == 1.0) return 0.0;
    double y = 1.0;
    double z = 1.0 - x;
    for (;;) {
        x = std::sqrt(x);
        const double before = z;
        y *= 0.5;
        z -= (1.0 - x) * (1.0 - x) * y;
        if (z == before) return z / 3.0;
    }
}

}  // namespace

void HllSketch::add(std::uint64_t hash) noexcept {
    const std::size_t index = hash >> kQ;
    const std::uint64_t rest = hash << kHllPrecision;
    const int value =
        rest == 0 ? kQ + 1 : std::min(__builtin_clzll(rest) + 1, kQ + 1);
    std::uint8_t& r = registers_[index];
    r = std::max(r, static_cast<std::uint8_t>(value));
}

bool HllSketch::merge(const HllSketch& other) noexcept {
    bool grew = false;
    for (std::size_t i = 0; i < kHllRegisters; ++i) {
        if (other.registers_[i] > registers_[i]) {
            registers_[i] = other.registers_[i];
            grew = true;
        }
    }
    return grew;
}

// Checked whole before any register changes, then applied in place: a
// listing page merges hundreds of stored sketches, mostly sparse ones of a
// few bytes, and must not pay 4 KiB for each.
bool HllSketch::merge_stored(std::string_view s) noexcept {
    auto byte = [&](std::size_t i) { return static_cast<std::uint8_t>(s[i]); };
    if (s.empty()) return true;
    if (byte(0) == kDense && s.size() == 1 + kHllRegisters) {
        for (std::size_t i = 0; i < kHllRegisters; ++i) {
            if (byte(1 + i) > kQ + 1) return false;
        }
        for (std::size_t i = 0; i < kHllRegisters; ++i) {
            registers_[i] = std::max(registers_[i], byte(1 + i));
        }
        return true;
    }
    if (byte(0) != kSparse || (s.size() - 1) % 3 != 0) return false;
    for (std::size_t at = 1; at < s.size(); at += 3) {
        const std::size_t index = std::size_t{byte(at)} << 8 | byte(at + 1);
        if (index >= kHllRegisters || byte(at + 2) > kQ + 1) return false;
    }
    for (std::size_t at = 1; at < s.size(); at += 3) {
        std::uint8_t& r = registers_[std::size_t{byte(at)} << 8 | byte(at + 1)];
        r = std::max(r, byte(at + 2));
    }
    return true;
}

std::string HllSketch::stored() const {
    const auto set = static_cast<std::size_t>(
        kHllRegisters -
        std::count(registers_.begin(), registers_.end(), std::uint8_t{0}));
    std::string out;
    if (set == 0) return out;
    if (set > kSparseMax) {
        out.reserve(1 + kHllRegisters);
        out.push_back(static_cast<char>(kDense));
        out.append(reinterpret_cast<const char*>(registers_.data()),
                   registers_.size());
        return out;
    }
    out.reserve(1 + 3 * set);
    out.push_back(static_cast<char>(kSparse));
    for (std::size_t i = 0; i < kHllRegisters; ++i) {
        if (registers_[i] == 0) continue;
        out.push_back(static_cast<char>(i >> 8));
        out.push_back(static_cast<char>(i & 0xff));
        out.push_back(static_cast<char>(registers_[i]));
    }
    return out;
}

std::uint64_t HllSketch::estimate() const noexcept {
    // A listing page estimates a sketch per key, and most keys are seen
    // from a few addresses: whole words of empty registers are counted at
    // once, and integer counts spare a chain of dependent float adds.
    std::array<std::uint32_t, kQ + 2> count{};
    for (std::size_t i = 0; i < kHllRegisters; i += 8) {
        std::uint64_t word;
        std::memcpy(&word, &registers_[i], sizeof word);
        if (word == 0) {
            count[0] += 8;
            continue;
        }
        for (std::size_t j = i; j < i + 8; ++j) ++count[registers_[j]];
    }
    const double m = static_cast<double>(kHllRegisters);
    if (count[0] == m) return 0;
    double z = m * tau(1.0 - count[kQ + 1] / m);
    for (int k = kQ; k >= 1; --k) z = 0.5 * (z + count[k]);
    z += m * sigma(count[0] / m);
    const double alpha = 1.0 / (2.0 * std::log(2.0));
    return static_cast<std::uint64_t>(std::llround(alpha * m * m / z));
}

bool HllSketch::empty() const noexcept {
    return std::all_of(registers_.begin(), registers_.end(),
                       [](std::uint8_t r) { return r == 0; });
}

}  // namespace apikey
