// A fork-join pool for the package's CPU kernels.
#pragma once

#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dp_mlx {

// The kernels run on an MLX stream thread and hand parts of each product to helper threads. A
// denoising step calls the few-row kernel about 40 times with 0.05-0.5 ms of other work in
// between, so a helper spins for a while after each part before it sleeps on the condition
// variable: waking a sleeping thread costs tens of microseconds.

class Workers {
 public:
  static Workers& get() {
    // Never destroyed: helpers wait on its condition variable until the process ends, and
    // glibc's pthread_cond_destroy would block on them at exit.
    static Workers* pool = new Workers;
    return *pool;
  }

  // Run fn(0) .. fn(n - 1), fn(0) on the calling thread.
  void run(int n, const std::function<void(int)>& fn) {
    if (n <= 1) {
      fn(0);
      return;
    }
    std::lock_guard<std::mutex> call(call_mutex_);
    ensure(n - 1);
    job_ = &fn;
    active_ = n - 1;
    pending_.store(n - 1, std::memory_order_relaxed);
    {
      // Under the mutex, so that a helper between its last check and its wait sees it.
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    fn(0);
    while (pending_.load(std::memory_order_acquire) != 0) _mm_pause();
  }

 private:
  static constexpr auto kSpin = std::chrono::microseconds(300);

  void ensure(int helpers) {
    while (static_cast<int>(threads_.size()) < helpers) {
      const int index = static_cast<int>(threads_.size()) + 1;
      threads_.emplace_back([this, index] { loop(index); });
      threads_.back().detach();
    }
  }

  uint64_t await_generation(uint64_t seen) {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    for (int i = 0;; ++i) {
      const uint64_t now = generation_.load(std::memory_order_acquire);
      if (now != seen) return now;
      _mm_pause();
      if (i % 64 == 63 && std::chrono::steady_clock::now() > until) break;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    return generation_.load(std::memory_order_acquire);
  }

  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      seen = await_generation(seen);
      if (index <= active_) {
        (*job_)(index);
        pending_.fetch_sub(1, std::memory_order_release);
      }
    }
  }

  std::mutex call_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  int active_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
};

}  // namespace dp_mlx
