// The one thread pool of our CPU kernels. Sized from HELEXA_NUM_THREADS, else from the CPUs this
// process may run on; neuron.ops sets it to torch's thread count at import, so our kernels and
// torch's never oversubscribe the cores. Plain std::thread: no second OpenMP runtime beside torch's.
//
// parallel_for splits [0, n) into one contiguous range per thread (ranges are multiples of
// `grain`); the calling thread runs the first range itself. Workers spin briefly after a job
// before sleeping, so back-to-back kernels (a decode step) do not pay a wake-up each time.
// A call made while the pool is busy (another thread, or a nested call) runs serially inline.
#pragma once

#include <cstdint>
#include <utility>

namespace helexa {

using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);

int num_threads();
void set_num_threads(int n);  // n >= 1; takes effect at the next parallel_for
void run_parallel(int64_t n, int64_t grain, RangeFn fn, void* ctx);

// Idle spin before sleeping (HELEXA_SPIN_US, default 200 us): longer keeps back-to-back kernels
// of a decode step from paying a wake-up each; shorter frees the cores sooner for other pools.
void set_spin_us(int64_t us);
int64_t spin_us();

template <class F>
void parallel_for(int64_t n, int64_t grain, F&& f) {
  using Fn = std::remove_reference_t<F>;
  run_parallel(
      n, grain,
      [](void* ctx, int64_t begin, int64_t end) { (*static_cast<Fn*>(ctx))(begin, end); },
      const_cast<void*>(static_cast<const void*>(&f)));
}

}  // namespace helexa
