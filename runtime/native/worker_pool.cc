// The operators' own worker threads (kernels.h: parallel_for), used when the runtime sets a thread count.
//
// ONNX Runtime's pool either sleeps between parallel loops (each of a decode step's ~100 loops then waits about
// 20 us for a worker to wake, a quarter of an int8 step at 2 threads) or spins (a core stays busy, and beside
// another busy process the step slows by a fifth). These workers spin after each loop for a short while,
// yielding the core to anything else runnable, and only then sleep: within a step the next loop finds them
// awake, between steps they sleep. The calling thread claims tasks too and never waits for a worker that has
// not started one, so a descheduled worker costs a share of the loop, never a wake-up.
//
// One loop at a time: a second caller (another session running at the same moment) runs its loop alone.

#include "kernels.h"

#if defined(__linux__)

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include <immintrin.h>

namespace rwkv_cpu {
namespace {

// How long a worker stays awake after its last loop: the gaps between a step's loops are tens of microseconds.
// (50, 200 and 1000 us measured the same, quiet and beside a busy process; /tmp A/B on the 0.1B int8 step.)
constexpr std::chrono::microseconds kSpin(200);
constexpr uint64_t kClosed = 0xffffffffu;         // a ticket's index once its loop is finished

long futex(std::atomic<uint32_t>* word, int op, uint32_t value) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, value, nullptr, nullptr, 0);
}

class Pool {
 public:
  void set_threads(int threads) {
    std::lock_guard<std::mutex> lock(run_mutex_);
    const size_t wanted = threads > 1 ? (size_t)threads - 1 : 0;
    if (workers_->size() == wanted) return;
    stop_workers();
    for (size_t i = 0; i < wanted; ++i) workers_->emplace_back([this] { work(); });
    worker_count_.store(wanted);
  }

  // In a child forked from this process: none of the threads came along. Forget them (their handles are never
  // touched again) and start from an unlocked pool without workers.
  void forget_after_fork() {
    workers_ = new std::vector<std::thread>();
    worker_count_.store(0);
    sleepers_.store(0);
    new (&run_mutex_) std::mutex();
  }

  // Runs fn(data, i) for i in [0, tasks); false when the pool has no workers (the caller uses ONNX Runtime's).
  bool run(size_t tasks, TaskFn fn, void* data) {
    if (worker_count_.load() == 0) return false;
    std::unique_lock<std::mutex> lock(run_mutex_, std::try_to_lock);
    if (!lock.owns_lock() || tasks <= 1) {
      for (size_t i = 0; i < tasks; ++i) fn(data, i);
      return true;
    }
    fn_.store(fn);
    data_.store(data);
    tasks_.store(tasks);
    done_.store(0);
    const uint64_t loop = ++loops_;
    ticket_.store(loop << 32);  // open: index 0
    generation_.fetch_add(1);
    if (sleepers_.load() > 0) futex(&generation_, FUTEX_WAKE_PRIVATE, INT32_MAX);
    claim(loop << 32);
    // Tasks a worker claimed and is running. (Yielding here instead measured slower beside a busy process.)
    while (done_.load() < tasks) _mm_pause();
    ticket_.store((loop << 32) | kClosed);
    return true;
  }

 private:
  // Claims and runs tasks of the loop whose ticket was `seen` (the loop's number in the high half) until none
  // are left or the loop is another one.
  void claim(uint64_t seen) {
    for (;;) {
      uint64_t ticket = ticket_.load();
      if ((ticket >> 32) != (seen >> 32)) return;
      const TaskFn fn = fn_.load();
      void* data = data_.load();
      const size_t tasks = tasks_.load();
      const uint64_t index = ticket & kClosed;
      if (index >= tasks) return;
      // Fields read before the claim are this loop's: the next loop closes the ticket before writing its own.
      if (!ticket_.compare_exchange_strong(ticket, ticket + 1)) continue;
      fn(data, (size_t)index);
      done_.fetch_add(1);
    }
  }

  void work() {
    uint32_t seen = generation_.load();
    while (!stopping_.load()) {
      const auto until = std::chrono::steady_clock::now() + kSpin;
      uint32_t now = generation_.load();
      while (now == seen && !stopping_.load() && std::chrono::steady_clock::now() < until) {
        sched_yield();  // lets anything else runnable on this core run, and returns at once when nothing is
        now = generation_.load();
      }
      if (now == seen && !stopping_.load()) {
        sleepers_.fetch_add(1);
        if (generation_.load() == seen && !stopping_.load()) futex(&generation_, FUTEX_WAIT_PRIVATE, seen);
        sleepers_.fetch_sub(1);
        continue;
      }
      seen = now;
      claim(ticket_.load());
    }
  }

  void stop_workers() {
    worker_count_.store(0);
    stopping_.store(true);
    generation_.fetch_add(1);
    futex(&generation_, FUTEX_WAKE_PRIVATE, INT32_MAX);
    for (std::thread& t : *workers_) t.join();
    workers_->clear();
    stopping_.store(false);
  }

  std::mutex run_mutex_;
  std::vector<std::thread>* workers_ = new std::vector<std::thread>();  // replaced, never freed, after a fork
  std::atomic<size_t> worker_count_{0};
  std::atomic<TaskFn> fn_{nullptr};
  std::atomic<void*> data_{nullptr};
  std::atomic<size_t> tasks_{0}, done_{0};
  std::atomic<uint64_t> ticket_{kClosed};
  uint64_t loops_ = 0;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stopping_{false};
};

Pool& pool() {
  static Pool* p = [] {
    Pool* made = new Pool();  // never destroyed: workers may outlive static destructors at exit
    pthread_atfork(nullptr, nullptr, [] { pool().forget_after_fork(); });
    return made;
  }();
  return *p;
}

}  // namespace

void set_pool_threads(int threads) { pool().set_threads(threads); }
bool pool_run(size_t tasks, TaskFn fn, void* data) { return pool().run(tasks, fn, data); }

}  // namespace rwkv_cpu

#else  // elsewhere the operators keep ONNX Runtime's pool

namespace rwkv_cpu {
void set_pool_threads(int) {}
bool pool_run(size_t, TaskFn, void*) { return false; }
}  // namespace rwkv_cpu

#endif
