// A fixed pool of worker threads for the parallel regions of the runtime (one per matmul or op).
// Latency matters: a decode step runs a few hundred regions, so workers spin briefly on the region
// counter before they sleep on a condition variable; an idle pool sleeps and uses no CPU. The chunks
// of a region are claimed, not assigned: a thread that finishes early (the caller included) runs the
// chunks no one has started, so a worker that the OS has not scheduled yet delays nothing.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tca {

class thread_pool {
  public:
    explicit thread_pool(int n_threads);  // n_threads >= 1, the caller counts as one
    ~thread_pool();
    thread_pool(const thread_pool &)             = delete;
    thread_pool & operator=(const thread_pool &) = delete;

    int size() const { return n_threads_; }

    // Runs fn(begin, end, chunk) over [0, n) split into size() contiguous chunks (chunk i is
    // [n i / T, n (i + 1) / T), empty ones are skipped); returns when all are done. Each chunk runs
    // exactly once, on one thread, so chunk can index per-thread scratch. The first exception thrown
    // by a chunk is rethrown here after every chunk has finished. Not reentrant: fn must not call
    // parallel_for on the same pool, and one thread at a time calls it.
    void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)> & fn);

  private:
    void worker_main();
    void run_chunks(uint32_t generation);  // claims and runs chunks of that region until none is left

    int n_threads_;
    std::vector<std::thread> workers_;  // [n_threads - 1]

    std::mutex mutex_;
    std::condition_variable wake_;
    // generation of the current region (high 32 bits) and its next unclaimed chunk (low 32 bits);
    // workers wait for the generation to change.
    std::atomic<uint64_t> state_{0};
    std::atomic<int> n_done_{0};     // chunks of the current region finished
    std::atomic<bool> stop_{false};  // set with a last generation bump on destruction
    uint32_t generation_ = 0;        // the caller's copy

    // The current region, written before state_ is published (release) and read after a chunk is
    // claimed (acquire); it cannot change while a claimed chunk is unfinished.
    const std::function<void(int64_t, int64_t, int)> * fn_ = nullptr;
    int64_t n_                                             = 0;
    std::exception_ptr error_;  // guarded by mutex_
};

}  // namespace tca
