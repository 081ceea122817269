#include "work_queue.h"

#include <utility>

namespace apikey {

WorkQueue::WorkQueue(std::size_t threads, std::size_t max_waiting)
    : max_waiting_(max_waiting) {
    threads_.reserve(threads);
    for (std::size_t i = 0; i < threads; ++i) {
        threads_.emplace_back([this] { work(); });
    }
}

WorkQueue::~WorkQueue() { stop(); }

bool WorkQueue::try_push(std::function<void()> job) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_ || jobs_.size() >= max_waiting_) return false;
        jobs_.push_back(std::move(job));
    }
    ready_.notify_one();
    return true;
}

void WorkQueue::stop() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
        jobs_.clear();
    }
    ready_.notify_all();
    for (std::thread& t : threads_) {
        if (t.joinable()) t.join();
    }
}

std::size_t WorkQueue::waiting() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return jobs_.size();
}

void WorkQueue::work() {
    for (;;) {
        std::function<void()> job;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            ready_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
            if (stopping_) return;
            job = std::move(jobs_.front());
            jobs_.pop_front();
        }
        job();
    }
}

}  // namespace apikey
