// A fixed set of worker threads behind a bounded queue. A job offered while
// the queue is full is refused at once rather than queued, so the caller
// can answer "busy" instead of letting requests pile up without bound.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace apikey {

class WorkQueue {
public:
    // Starts `threads` workers; at most `max_waiting` jobs wait for one.
    WorkQueue(std::size_t threads, std::size_t max_waiting);
    ~WorkQueue();
    WorkQueue(const WorkQueue&) = delete;
    WorkQueue& operator=(const WorkQueue&) = delete;

    // Queues `job` (which must not throw); false when `max_waiting` jobs
    // are already waiting, or after stop().
    [[nodiscard]] bool try_push(std::function<void()> job);

    // Drops the waiting jobs, lets the running ones finish and joins the
    // workers. Idempotent.
    void stop();

    std::size_t waiting() const;

private:
    void work();

    const std::size_t max_waiting_;
    mutable std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<std::function<void()>> jobs_;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

}  // namespace apikey
