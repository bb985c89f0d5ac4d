// A fixed pool of worker threads for the parallel regions of the runtime (one per matmul or op).
// Latency matters: a decode step runs a few hundred regions, so workers spin briefly on the region
// counter before they sleep on a condition variable; an idle pool sleeps and uses no CPU.
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

    // Runs fn(begin, end, thread_index) over [0, n) split into contiguous chunks, one per thread
    // (thread i gets [n i / T, n (i + 1) / T), empty chunks are skipped); returns when all are done.
    // The first exception thrown by a chunk is rethrown here after every chunk has finished.
    // Not reentrant: fn must not call parallel_for on the same pool.
    void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)> & fn);

  private:
    void worker_main(int index);
    void run_chunk(int index);

    int n_threads_;
    std::vector<std::thread> workers_;  // [n_threads - 1]; worker k runs chunk k + 1

    std::mutex mutex_;
    std::condition_variable wake_;
    std::atomic<uint64_t> generation_{0};  // bumped once per region; workers wait for a change
    std::atomic<int> n_busy_{0};           // workers still running the current region
    std::atomic<bool> stop_{false};        // set with a last bump of generation_ on destruction

    // The current region, written before generation_ is bumped (release) and read after it is seen.
    const std::function<void(int64_t, int64_t, int)> * fn_ = nullptr;
    int64_t n_                                             = 0;
    std::exception_ptr error_;  // guarded by mutex_
};

}  // namespace tca
