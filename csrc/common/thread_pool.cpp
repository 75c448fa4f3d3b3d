#include "common/thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HELEXA_PAUSE() _mm_pause()
#else
#define HELEXA_PAUSE() std::this_thread::yield()
#endif

namespace helexa {
namespace {

// How long idle threads (and a waiting caller) spin before sleeping on a condition variable.
std::atomic<int64_t> g_spin_us{[] {
  const char* env = std::getenv("HELEXA_SPIN_US");
  return env != nullptr ? std::atoll(env) : int64_t{200};
}()};

std::chrono::microseconds spin_time() { return std::chrono::microseconds(g_spin_us.load(std::memory_order_relaxed)); }

int default_threads() {
  if (const char* env = std::getenv("HELEXA_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
  const unsigned n = std::thread::hardware_concurrency();
  return n >= 1 ? static_cast<int>(n) : 1;
}

class Pool {
 public:
  explicit Pool(int nthreads) : target_(nthreads) {}

  int threads() const { return target_.load(); }
  void set_threads(int n) { target_.store(n); }

  void run(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    const int64_t units = (n + grain - 1) / grain;
    const int want = target_.load();
    const int64_t parts = units < want ? units : want;
    std::unique_lock<std::mutex> busy(busy_mu_, std::try_to_lock);
    if (parts <= 1 || !busy.owns_lock()) {
      fn(ctx, 0, n);
      return;
    }
    ensure_workers(want - 1);
    job_fn_ = fn;
    job_ctx_ = ctx;
    job_n_ = n;
    job_grain_ = grain;
    job_units_ = units;
    job_parts_ = static_cast<int>(parts);
    error_ = nullptr;
    // Every worker acknowledges every job (idle ones just count down), so no worker can still be
    // reading this job's fields when the next one is written.
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(wake_mu_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_cv_.notify_all();
    run_part(0);
    wait_done();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run_part(int part) {
    const int64_t u0 = job_units_ * part / job_parts_;
    const int64_t u1 = job_units_ * (part + 1) / job_parts_;
    const int64_t begin = u0 * job_grain_;
    const int64_t end = u1 * job_grain_ < job_n_ ? u1 * job_grain_ : job_n_;
    if (begin >= end) return;
    try {
      job_fn_(job_ctx_, begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lk(error_mu_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void wait_done() {
    const auto until = std::chrono::steady_clock::now() + spin_time();
    while (pending_.load(std::memory_order_acquire) != 0) {
      if (std::chrono::steady_clock::now() > until) {
        std::unique_lock<std::mutex> lk(done_mu_);
        done_cv_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
        return;
      }
      HELEXA_PAUSE();
    }
  }

  void ensure_workers(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      // A new worker starts from the generation current now, before this job is published, so it
      // cannot miss the job even when the thread starts late.
      const int index = static_cast<int>(workers_.size()) + 1;
      const uint64_t seen = generation_.load(std::memory_order_acquire);
      workers_.emplace_back([this, index, seen] { worker_loop(index, seen); });
    }
  }

  void worker_loop(int index, uint64_t seen) {
    for (;;) {
      uint64_t gen = generation_.load(std::memory_order_acquire);
      if (gen == seen) {
        const auto until = std::chrono::steady_clock::now() + spin_time();
        while ((gen = generation_.load(std::memory_order_acquire)) == seen &&
               std::chrono::steady_clock::now() < until) {
          HELEXA_PAUSE();
        }
        if (gen == seen) {
          std::unique_lock<std::mutex> lk(wake_mu_);
          wake_cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
          gen = generation_.load(std::memory_order_acquire);
        }
      }
      seen = gen;
      if (index < job_parts_) run_part(index);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(done_mu_);
        done_cv_.notify_one();
      }
    }
  }

  std::atomic<int> target_;
  std::mutex busy_mu_;  // one job at a time
  std::vector<std::thread> workers_;

  RangeFn job_fn_ = nullptr;
  void* job_ctx_ = nullptr;
  int64_t job_n_ = 0, job_grain_ = 1, job_units_ = 0;
  int job_parts_ = 0;

  std::atomic<uint64_t> generation_{0};
  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  std::atomic<int> pending_{0};
  std::mutex done_mu_;
  std::condition_variable done_cv_;
  std::mutex error_mu_;
  std::exception_ptr error_;
};

// The pool is never destroyed: its workers sleep on a condition variable until the process exits.
// A forked child has none of the parent's threads, so it starts a fresh pool (leaking the old one).
std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork_once;

void reset_after_fork() {
  Pool* old = g_pool.load();
  g_pool.store(new Pool(old ? old->threads() : default_threads()));
}

Pool& pool() {
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, reset_after_fork); });
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p == nullptr) {
    static std::mutex init_mu;
    std::lock_guard<std::mutex> lk(init_mu);
    p = g_pool.load();
    if (p == nullptr) {
      p = new Pool(default_threads());
      g_pool.store(p, std::memory_order_release);
    }
  }
  return *p;
}

}  // namespace

int num_threads() { return pool().threads(); }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("number of threads must be >= 1");
  pool().set_threads(n);
}

void set_spin_us(int64_t us) {
  if (us < 0) throw std::invalid_argument("spin time must be >= 0 microseconds");
  g_spin_us.store(us);
}

int64_t spin_us() { return g_spin_us.load(); }

void run_parallel(int64_t n, int64_t grain, RangeFn fn, void* ctx) { pool().run(n, grain, fn, ctx); }

}  // namespace helexa
