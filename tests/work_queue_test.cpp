#include "work_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>

namespace apikey {
namespace {

using namespace std::chrono_literals;

// Occupies one worker of `q` until `release` is set.
void block_a_worker(WorkQueue& q, std::promise<void>& release) {
    std::shared_future<void> gate = release.get_future().share();
    std::promise<void> started;
    ASSERT_TRUE(q.try_push([&started, gate] {
        started.set_value();
        gate.wait();
    }));
    ASSERT_EQ(started.get_future().wait_for(5s), std::future_status::ready);
}

TEST(WorkQueue, RunsJobs) {
    WorkQueue q(2, 8);
    std::promise<void> done;
    ASSERT_TRUE(q.try_push([&] { done.set_value(); }));
    EXPECT_EQ(done.get_future().wait_for(5s), std::future_status::ready);
}

TEST(WorkQueue, RefusesWhenTheQueueIsFull) {
    WorkQueue q(1, 2);
    std::promise<void> release;
    block_a_worker(q, release);
    std::atomic<int> ran{0};
    EXPECT_TRUE(q.try_push([&] { ++ran; }));
    EXPECT_TRUE(q.try_push([&] { ++ran; }));
    EXPECT_EQ(q.waiting(), 2u);
    EXPECT_FALSE(q.try_push([&] { ++ran; })) << "the third waiting job";
    release.set_value();
    for (int i = 0; i < 500 && ran.load() < 2; ++i) {
        std::this_thread::sleep_for(10ms);
    }
    EXPECT_EQ(ran.load(), 2);
    EXPECT_TRUE(q.try_push([] {})) << "room again once drained";
}

TEST(WorkQueue, StopDropsWaitingJobsAndRefusesNewOnes) {
    WorkQueue q(1, 4);
    std::promise<void> release;
    block_a_worker(q, release);
    std::atomic<int> ran{0};
    ASSERT_TRUE(q.try_push([&] { ++ran; }));
    std::thread releaser([&] {
        std::this_thread::sleep_for(50ms);
        release.set_value();
    });
    q.stop();  // waits for the running job
    releaser.join();
    EXPECT_EQ(ran.load(), 0);
    EXPECT_FALSE(q.try_push([] {}));
    q.stop();
}

}  // namespace
}  // namespace apikey
