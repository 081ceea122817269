// RequestShape: which changes move which counter.
#include "usage_shape.h"

#include <cstring>

#include <gtest/gtest.h>

namespace apikey {
namespace {

const char kGet[kUsageMethodLen] = "GET";
const char kGetCopy[kUsageMethodLen] = "GET";  // the same text elsewhere
const char kItems[] = "/items";

struct Request {
    std::uint8_t key[16] = {1, 2, 3};
    std::uint8_t org[16] = {7};
    std::uint8_t ip[16] = {192, 0, 2, 1};
    IpFamily family = IpFamily::kV4;
    const char* method = kGet;
    bool constant = true;

    UsageFields fields() const {
        UsageFields f{};
        f.key_id = key;
        f.org_id = org;
        f.ip_family = family;
        f.ip = ip;
        f.method = std::string_view(method, std::strlen(method));
        f.endpoint = std::string_view(kItems);
        f.method_constant = constant;
        f.endpoint_constant = constant;
        return f;
    }
};

struct Counters {
    std::uint64_t route;
    std::uint64_t address;
};

Counters after(RequestShape* shape, const Request& r) {
    shape->observe(r.fields());
    return {shape->route(), shape->address()};
}

TEST(RequestShape, StartsAtZeroAndCountsFromTheFirstRequest) {
    RequestShape shape;
    EXPECT_EQ(shape.route(), 0u);
    EXPECT_EQ(shape.address(), 0u);
    const Counters c = after(&shape, Request{});
    EXPECT_NE(c.route, 0u);
    EXPECT_NE(c.address, 0u);
}

TEST(RequestShape, TheSameRequestAgainChangesNothing) {
    RequestShape shape;
    const Request r;
    const Counters first = after(&shape, r);
    for (int i = 0; i < 3; ++i) {
        const Counters again = after(&shape, r);
        EXPECT_EQ(again.route, first.route);
        EXPECT_EQ(again.address, first.address);
    }
}

TEST(RequestShape, ARouteChangeMovesBothCounters) {
    const std::vector<void (*)(Request&)> changes = {
        [](Request& r) { r.key[15] = 9; },
        [](Request& r) { r.key[0] = 9; },
        [](Request& r) { r.org[8] = 1; },
        [](Request& r) { r.org[0] = 1; },
        // another address of the same text is another route: constant
        // texts are named by their address
        [](Request& r) { r.method = kGetCopy; },
    };
    for (std::size_t i = 0; i < changes.size(); ++i) {
        RequestShape shape;
        const Request base;
        const Counters before = after(&shape, base);
        Request changed = base;
        changes[i](changed);
        const Counters now = after(&shape, changed);
        EXPECT_GT(now.route, before.route) << i;
        EXPECT_GT(now.address, before.address) << i;
        // back again: new values, never the old ones
        const Counters back = after(&shape, base);
        EXPECT_GT(back.route, now.route) << i;
        EXPECT_GT(back.address, now.address) << i;
    }
}

TEST(RequestShape, AnAddressChangeMovesOnlyTheAddressCounter) {
    RequestShape shape;
    Request r;
    const Counters v4 = after(&shape, r);
    r.ip[3] = 2;
    const Counters other = after(&shape, r);
    EXPECT_EQ(other.route, v4.route);
    EXPECT_GT(other.address, v4.address);
    // the same 4 bytes as IPv6's first bytes: another family, another
    // address
    r.family = IpFamily::kV6;
    const Counters v6 = after(&shape, r);
    EXPECT_EQ(v6.route, v4.route);
    EXPECT_GT(v6.address, other.address);
    // bytes past an IPv4 address are not part of it
    r.family = IpFamily::kV4;
    const Counters back = after(&shape, r);
    r.ip[8] = 0xff;
    const Counters same = after(&shape, r);
    EXPECT_EQ(same.address, back.address);
    // an IPv6 address's last byte is
    r.family = IpFamily::kV6;
    const Counters v6a = after(&shape, r);
    r.ip[15] = 1;
    const Counters v6b = after(&shape, r);
    EXPECT_GT(v6b.address, v6a.address);
    EXPECT_EQ(v6b.route, v4.route);
}

TEST(RequestShape, TextsThatAreNotConstantAreANewRouteEveryTime) {
    RequestShape shape;
    Request r;
    r.constant = false;
    const Counters first = after(&shape, r);
    const Counters second = after(&shape, r);
    EXPECT_GT(second.route, first.route);
    EXPECT_GT(second.address, first.address);
    // and the constant request after them is a new route too
    r.constant = true;
    const Counters third = after(&shape, r);
    EXPECT_GT(third.route, second.route);
    const Counters fourth = after(&shape, r);
    EXPECT_EQ(fourth.route, third.route);
}

}  // namespace
}  // namespace apikey
