#include "thread_pool.h"

#include <chrono>

#include "common.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace tca {

namespace {

// How long a worker polls for the next region before it sleeps: longer than the gap between the
// parallel regions of one decode step, short enough that an idle pool stops burning CPU at once.
constexpr auto k_spin_time = std::chrono::microseconds(300);

inline void cpu_relax() {
#if defined(__SSE2__)
    _mm_pause();
#endif
}

}  // namespace

thread_pool::thread_pool(int n_threads) : n_threads_(n_threads) {
    if (n_threads < 1) {
        fail("thread_pool: n_threads must be at least 1, got %d", n_threads);
    }
    workers_.reserve(size_t(n_threads - 1));
    for (int i = 1; i < n_threads; ++i) {
        workers_.emplace_back([this, i] { worker_main(i); });
    }
}

thread_pool::~thread_pool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_.store(true, std::memory_order_relaxed);
        generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (std::thread & t : workers_) {
        t.join();
    }
}

void thread_pool::run_chunk(int index) {
    const int64_t begin = n_ * index / n_threads_;
    const int64_t end   = n_ * (index + 1) / n_threads_;
    if (begin >= end) {
        return;
    }
    try {
        (*fn_)(begin, end, index);
    } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) {
            error_ = std::current_exception();
        }
    }
}

void thread_pool::worker_main(int index) {
    uint64_t seen = 0;
    for (;;) {
        // Spin on the counter for a while, then sleep until the next region or shutdown.
        const auto t0 = std::chrono::steady_clock::now();
        for (int k = 0; generation_.load(std::memory_order_acquire) == seen; ++k) {
            cpu_relax();
            if (k % 256 == 255 && std::chrono::steady_clock::now() - t0 > k_spin_time) {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
                break;
            }
        }
        seen = generation_.load(std::memory_order_acquire);
        if (stop_.load(std::memory_order_relaxed)) {
            return;
        }
        run_chunk(index);
        n_busy_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

void thread_pool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)> & fn) {
    if (n <= 0) {
        return;
    }
    if (n_threads_ == 1 || n == 1) {
        fn(0, n, 0);
        return;
    }
    fn_    = &fn;
    n_     = n;
    error_ = nullptr;
    n_busy_.store(n_threads_ - 1, std::memory_order_relaxed);
    {
        // Under the lock so that a worker between its check and its wait cannot miss the bump.
        std::lock_guard<std::mutex> lock(mutex_);
        generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    run_chunk(0);
    for (int k = 0; n_busy_.load(std::memory_order_acquire) != 0; ++k) {
        if (k < 4096) {
            cpu_relax();
        } else {
            std::this_thread::yield();
        }
    }
    fn_ = nullptr;
    if (error_) {
        std::rethrow_exception(error_);
    }
}

}  // namespace tca
