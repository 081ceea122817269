// What the spool's tests share: a scratch spool directory (removed with
// everything in it), a logger that keeps the spool's lines, and batches
// whose records say which batch they belong to.
#pragma once

#include <dirent.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "spool.h"
#include "spool_frame.h"

namespace apikey::testing {

class SpoolTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string tmpl = ::testing::TempDir() + "spool_test_XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
        root_ = tmpl;
        dir_ = root_ + "/spool";
    }
    void TearDown() override {
        std::string cmd = "rm -rf '" + root_ + "'";
        ASSERT_EQ(std::system(cmd.c_str()), 0);
    }

    std::vector<std::string> files() const {
        std::vector<std::string> out;
        if (DIR* d = ::opendir(dir_.c_str())) {
            while (dirent* e = ::readdir(d)) {
                if (std::strncmp(e->d_name, "spool-", 6) == 0) {
                    out.push_back(dir_ + "/" + e->d_name);
                }
            }
            ::closedir(d);
        }
        std::sort(out.begin(), out.end());
        return out;
    }

    Spool::LogFn logger() {
        return [this](const std::string& m) { logs_.push_back(m); };
    }

    std::string root_;
    std::string dir_;
    std::vector<std::string> logs_;
};

// A batch whose records carry (batch id, index) in sequence, each with a
// 200-byte user agent unlike its neighbours' (about 220 bytes a record in
// a frame).
inline std::vector<UsageRecord> batch(std::uint64_t id, std::size_t n) {
    std::vector<UsageRecord> out(n);
    for (std::size_t i = 0; i < n; ++i) {
        UsageRecord& r = out[i];
        std::memset(&r, 0, sizeof(r));
        r.generation = id;
        r.sequence = i;
        r.time_us = static_cast<std::int64_t>(id * 1000 + i);
        r.endpoint_len = 5;
        std::memcpy(r.endpoint, "/item", 5);
        r.user_agent_len = 200;
        std::memset(r.user_agent, 'a' + static_cast<int>(i % 26), 200);
    }
    return out;
}

// The bytes a batch takes in the spool.
inline std::uint64_t frame_bytes(const std::vector<UsageRecord>& b) {
    std::vector<unsigned char> payload;
    encode_spool_payload(b, &payload);
    return kSpoolFrameHeaderBytes + payload.size();
}

inline std::uint64_t batch_id(const std::vector<UsageRecord>& b) {
    return b.empty() ? 0 : b.front().generation;
}

// Replays everything, recording batch ids.
inline std::vector<std::uint64_t> drain(Spool& s) {
    std::vector<std::uint64_t> ids;
    s.replay([&](const std::vector<UsageRecord>& b) {
        ids.push_back(batch_id(b));
        return true;
    });
    return ids;
}

}  // namespace apikey::testing
