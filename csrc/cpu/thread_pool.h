// Short parallel regions for the CPU kernels: OpenMP regions on torch's own worker threads where the build
// has OpenMP, else a persistent pool of our own (a decode step runs ~200 linear layers of a few hundred
// microseconds each; starting and joining std::threads for each would cost a tenth of that).
#pragma once

#include <cstdint>
#include <functional>

namespace genai_fast {

// Runs fn(task) for every task in [0, num_tasks) on the calling thread and up to workers - 1 pooled
// threads, and returns when all have returned. Tasks are claimed one at a time from a shared counter, so
// a pooled thread that the OS has not scheduled (torch's OpenMP threads may hold the cores for a while
// after their own regions) delays nothing: the threads that are running take its share. A task may run
// on any thread; fn must not depend on which. A region started from inside another runs serially; a forked
// child starts with a fresh pool of our own (libgomp's threads do not survive fork()).
void pool_run(int64_t num_tasks, int workers, const std::function<void(int64_t)>& fn);

}  // namespace genai_fast
