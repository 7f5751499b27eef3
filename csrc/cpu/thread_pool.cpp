// See thread_pool.h. Built with OpenMP (the default, see setup.py), a region is an OpenMP parallel region:
// the process then has one set of worker threads, torch's own (its CPU wheels link libgomp.so.1, and the
// loader shares one copy with us). With a pool of our own, right after a torch op our threads waited for
// the core a spinning torch worker held (and left spinning threads in torch's way): a Winograd conv between
// torch ops took 2.3x as long as alone. libgomp does not survive fork() once its threads exist, so a forked
// child (a DataLoader worker) and builds without OpenMP use the pool below: each region is a heap object
// shared with the pooled threads that join it; a thread runs fn only for a task index it claimed below
// num_tasks, and the caller waits until every task is done before returning, so fn (which may refer to the
// caller's stack) is never called after that.
#include "thread_pool.h"

#include <pthread.h>
#include <sched.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace genai_fast {
namespace {

// After a region a pooled thread polls for the next one: first with pause instructions, then yielding
// the core (so torch's own threads can have it), then it sleeps until woken.
constexpr int kPauseRounds = 200;
constexpr int kYieldRounds = 10;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

struct Region {
  const std::function<void(int64_t)>* fn;
  int64_t num_tasks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::exception_ptr error;  // the first exception a task threw, rethrown on the caller's thread

  // Claims and runs tasks until none are left. A task that throws (std::bad_alloc, say) must not end a pooled
  // thread (the process would terminate) nor leave the caller waiting: every claimed task counts as done, and
  // after a failure the rest are skipped.
  void work() {
    for (int64_t task = next.fetch_add(1); task < num_tasks; task = next.fetch_add(1)) {
      if (!failed.load(std::memory_order_relaxed)) {
        try {
          (*fn)(task);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
          failed.store(true, std::memory_order_relaxed);
        }
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

struct Pool {
  std::mutex region_mutex;  // one region at a time
  std::mutex state_mutex;   // guards current; the sleepers wait on it
  std::condition_variable wake;
  std::shared_ptr<Region> current;
  std::atomic<uint64_t> generation{0};
  int threads = 0;

  void grow(int pooled) {
    for (; threads < pooled; ++threads) {
      std::thread([this, seen = generation.load()] { loop(seen); }).detach();  // lives until the process ends
    }
  }

  void loop(uint64_t seen) {
    for (;;) {
      uint64_t now = generation.load(std::memory_order_acquire);
      for (int round = 0; now == seen && round < kPauseRounds + kYieldRounds; ++round) {
        if (round < kPauseRounds) {
          cpu_relax();
        } else {
          sched_yield();
        }
        now = generation.load(std::memory_order_acquire);
      }
      std::shared_ptr<Region> region;
      {
        std::unique_lock<std::mutex> lock(state_mutex);
        if (now == seen) wake.wait(lock, [&] { return generation.load(std::memory_order_acquire) != seen; });
        seen = generation.load(std::memory_order_acquire);
        region = current;
      }
      if (region) region->work();
    }
  }

  void run(int64_t num_tasks, int workers, const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> one_region(region_mutex);
    grow(workers - 1);
    auto region = std::make_shared<Region>();
    region->fn = &fn;
    region->num_tasks = num_tasks;
    {
      std::lock_guard<std::mutex> lock(state_mutex);
      current = region;
      generation.fetch_add(1, std::memory_order_acq_rel);
    }
    wake.notify_all();
    region->work();
    while (region->done.load(std::memory_order_acquire) != num_tasks) cpu_relax();
    {
      std::lock_guard<std::mutex> lock(state_mutex);
      current.reset();  // late joiners find nothing to do
    }
    if (region->error) std::rethrow_exception(region->error);  // every task has finished: fn is no longer used
  }
};

Pool* the_pool = nullptr;
std::once_flag pool_once;
thread_local bool inside_region = false;

void reset_in_child() { the_pool = new Pool(); }  // the parent's threads do not exist here; leak their pool

Pool& pool() {
  std::call_once(pool_once, [] {
    the_pool = new Pool();  // never destroyed: detached threads may still be sleeping in it at exit
    pthread_atfork(nullptr, nullptr, reset_in_child);
  });
  return *the_pool;
}

#ifdef _OPENMP
// Set in every process forked from this one (registered when the library loads, before any region).
bool forked = false;
[[maybe_unused]] const int fork_watch = pthread_atfork(nullptr, nullptr, [] { forked = true; });

// Tasks claimed from a shared counter, as in the pool: a worker the OS has not scheduled delays nothing. An
// exception may not leave an OpenMP region (the runtime would terminate the process), so the first one a
// task throws (std::bad_alloc, say) stops the claiming and is rethrown on the caller's thread afterwards.
void openmp_run(int64_t num_tasks, int workers, const std::function<void(int64_t)>& fn) {
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
#pragma omp parallel num_threads(workers)
  {
    try {
      for (int64_t task = next.fetch_add(1); task < num_tasks && !failed.load(std::memory_order_relaxed);
           task = next.fetch_add(1)) {
        fn(task);
      }
    } catch (...) {
#pragma omp critical(genai_fast_region_error)
      if (!error) error = std::current_exception();
      failed.store(true, std::memory_order_relaxed);
    }
  }
  if (error) std::rethrow_exception(error);
}
#endif

}  // namespace

// The most threads a region starts. A caller's num_threads is only checked to be >= 1, and libgomp asked for
// tens of thousands of threads exits the process ("Thread creation failed") or crashes. Past a few per core,
// threads only wait for cores, so the cap costs no speed; it limits the threads, not the tasks, so no result
// changes (word2vec's per-task random streams included).
int max_workers() {
  static const int cap = static_cast<int>(std::max<unsigned>(64, 4 * std::thread::hardware_concurrency()));
  return cap;
}

void pool_run(int64_t num_tasks, int workers, const std::function<void(int64_t)>& fn) {
  if (num_tasks <= 0) return;
  workers = std::min(workers, max_workers());
  bool nested = inside_region;
#ifdef _OPENMP
  nested = nested || omp_in_parallel();
#endif
  if (workers <= 1 || num_tasks == 1 || nested) {
    for (int64_t task = 0; task < num_tasks; ++task) fn(task);
    return;
  }
#ifdef _OPENMP
  if (!forked) return openmp_run(num_tasks, workers, fn);
#endif
  const std::function<void(int64_t)> marked = [&fn](int64_t task) {
    struct Mark {  // reset even when fn throws: the thread's later regions must not run serially
      Mark() { inside_region = true; }
      ~Mark() { inside_region = false; }
    } mark;
    fn(task);
  };
  pool().run(num_tasks, workers, marked);
}

}  // namespace genai_fast
