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

inline uint32_t generation_of(uint64_t state) {
    return uint32_t(state >> 32);
}

}  // namespace

thread_pool::thread_pool(int n_threads) : n_threads_(n_threads) {
    if (n_threads < 1) {
        fail("thread_pool: n_threads must be at least 1, got %d", n_threads);
    }
    workers_.reserve(size_t(n_threads - 1));
    for (int i = 1; i < n_threads; ++i) {
        workers_.emplace_back([this] { worker_main(); });
    }
}

thread_pool::~thread_pool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_.store(true, std::memory_order_relaxed);
        state_.store(uint64_t(generation_ + 1) << 32, std::memory_order_release);
    }
    wake_.notify_all();
    for (std::thread & t : workers_) {
        t.join();
    }
}

void thread_pool::run_chunks(uint32_t generation) {
    uint64_t s = state_.load(std::memory_order_acquire);
    for (;;) {
        const uint32_t chunk = uint32_t(s);
        if (generation_of(s) != generation || chunk >= uint32_t(n_threads_)) {
            return;
        }
        if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
            continue;  // s was reloaded
        }
        const int64_t begin = n_ * chunk / n_threads_;
        const int64_t end   = n_ * (chunk + 1) / n_threads_;
        if (begin < end) {
            try {
                (*fn_)(begin, end, int(chunk));
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex_);
                if (!error_) {
                    error_ = std::current_exception();
                }
            }
        }
        n_done_.fetch_add(1, std::memory_order_release);
        s = state_.load(std::memory_order_acquire);
    }
}

void thread_pool::worker_main() {
    uint32_t seen = 0;
    for (;;) {
        // Spin on the generation for a while, then sleep until the next region or shutdown.
        const auto t0 = std::chrono::steady_clock::now();
        for (int k = 0; generation_of(state_.load(std::memory_order_acquire)) == seen; ++k) {
            cpu_relax();
            if (k % 256 == 255 && std::chrono::steady_clock::now() - t0 > k_spin_time) {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock,
                           [&] { return generation_of(state_.load(std::memory_order_acquire)) != seen; });
                break;
            }
        }
        seen = generation_of(state_.load(std::memory_order_acquire));
        if (stop_.load(std::memory_order_relaxed)) {
            return;
        }
        run_chunks(seen);
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
    n_done_.store(0, std::memory_order_relaxed);
    ++generation_;
    {
        // Under the lock so that a worker between its check and its wait cannot miss the change.
        std::lock_guard<std::mutex> lock(mutex_);
        state_.store(uint64_t(generation_) << 32, std::memory_order_release);
    }
    wake_.notify_all();
    run_chunks(generation_);
    // Chunks claimed by workers may still be running.
    for (int k = 0; n_done_.load(std::memory_order_acquire) != n_threads_; ++k) {
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
