// ck_emu execution engine: launches, block/warp barriers, the warp exchange area and the
// bookkeeping that detects barrier divergence and deadlocks. Included by cuda_emu.h (which
// provides dim3/uint3 first); not meant to be included on its own.
//
// Model
//   * A launch runs its blocks one after another, in linear order (x fastest). Launches are
//     serialized by one process-wide mutex, so the static storage behind __shared__ holds the
//     shared memory of exactly one running block.
//   * Every CUDA thread of a block is a fiber of the launching thread (CK_EMU_FIBERS, below:
//     the default) or an OS thread (ThreadSanitizer builds, -DCK_EMU_OS_THREADS). Fibers:
//     each block's fibers start at the kernel body, run one at a time, each until it parks
//     at a barrier or leaves the kernel; a completed phase makes its fibers runnable again.
//     OS threads: the launch starts blockDim.x·y·z std::threads once; each executes the
//     kernel body for block 0, 1, 2, ... and the threads meet at an internal end-of-block
//     rendezvous between two blocks (so the next block never sees a thread of the previous
//     one still running). Everything below holds in both models.
//   * __syncthreads() is a real barrier of the block's threads, __syncwarp() and every warp
//     collective (shuffles, votes, wmma) one of the warp's lanes. Each barrier is a mutex +
//     condition variable of its own (not std::barrier), so that (1) a thread that returns
//     from the kernel can be dropped from its block's and warp's barriers (the phases it was
//     the last one missing complete: no emulator deadlock), (2) the happens-before edges that
//     ThreadSanitizer sees are exactly CUDA's (a warp barrier orders only that warp's lanes;
//     no mutex is shared across barriers), and (3) real deadlocks are detected exactly: one
//     atomic word counts the block's running and blocked threads, and when every running
//     thread is blocked (e.g. half a warp in __syncthreads, the other half in __syncwarp) the
//     block is unwound and the launch fails with deadlock_error.
//   * Barrier divergence (undefined behaviour on a GPU: threads of a block executing a
//     different number of __syncthreads(), or lanes of a warp a different number of
//     warp-synchronous operations, typically because some returned early) is detected by
//     per-thread counters checked at the end of every block; launch() then throws
//     barrier_divergence (after running the remaining blocks), or only records it under
//     divergence_policy::record_only.
//   * Warp data exchange: each warp has two exchange buffers, used alternately by successive
//     collectives of a lane. A collective writes the lane's contribution into the current
//     buffer, passes the warp barrier, then reads. The next collective uses the other buffer,
//     and the one after that (which reuses this buffer) can only write after passing the
//     intervening collective's barrier, i.e. after every lane has finished reading — so one
//     barrier per collective suffices and all accesses are ordered by the warp barrier.
//   * Limits of the model: blocks of a grid are serialized, so races *between* blocks (plain
//     global-memory accesses a GPU would run concurrently) are invisible to ThreadSanitizer;
//     collectives need the full warp mask; no dynamic parallelism, clusters, cooperative
//     groups, streams (launch() is synchronous), or infinite-loop watchdog.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// Execution of a block's threads. ThreadSanitizer builds (and -DCK_EMU_OS_THREADS) run every
// CUDA thread as an OS thread: ThreadSanitizer must see real threads. Every other Linux build
// (AddressSanitizer's too, told of each stack switch) runs them as fibers (ucontext) on the
// launching thread,
// switched only where a CUDA thread waits at a barrier: the same barriers, the same
// interleavings a GPU allows, the same deadlock and divergence detection, without the
// futex sleep and wake-up of one OS thread per lane at every warp collective (measured: a
// 70 x 70 CLIP step made ~365,000 futex calls as OS threads, nearly all of its run time).
#if !defined(CK_EMU_OS_THREADS) && defined(__linux__) && !defined(__SANITIZE_THREAD__)
#define CK_EMU_FIBERS 1
#include <sys/mman.h>
#include <ucontext.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CK_EMU_ASAN_FIBERS 1
#else
#define CK_EMU_ASAN_FIBERS 0
#endif
#else
#define CK_EMU_FIBERS 0
#endif

namespace ck_emu {

// A launch failed (bad configuration, deadlock, divergence). Exceptions thrown by kernel
// code itself are rethrown unchanged by launch().
class launch_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// Threads of a block (or lanes of a warp) executed a different number of barriers.
class barrier_divergence : public launch_error {
 public:
  using launch_error::launch_error;
};
// Every running thread of a block waited at a barrier that could never complete.
class deadlock_error : public launch_error {
 public:
  using launch_error::launch_error;
};
// A device API was misused (called outside a kernel, partial warp mask, misaligned wmma
// pointer, ...). Thrown inside the offending emulated thread; launch() rethrows it.
class usage_error : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

enum class divergence_policy { throw_error, record_only };

namespace detail {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxBlockThreads = 1024;
constexpr std::size_t kExchangeBytes = 4096;  // per warp and buffer (wmma: two 16x16 fp32 tiles)
constexpr std::size_t kShuffleSlot = 16;      // bytes per lane for shuffles

// Unwinds the threads of a deadlocked block (deliberately not a std::exception, so kernel
// code with catch (const std::exception&) does not swallow it).
struct block_abort {};

struct Barrier {
  std::mutex m;
  std::condition_variable cv;
  unsigned expected = 0;  // threads that still take part (dropped when they return)
  unsigned arrived = 0;   // arrivals in the current phase
  unsigned long long gen = 0;
  long long acc = 0;                   // Σ predicate of the current phase
  long long result = 0, result_n = 0;  // Σ predicate / participants of the last phase
  std::vector<unsigned> parked;        // fibers waiting for this phase (fiber mode)
};

struct Warp {
  Barrier bar;
  unsigned lanes = 0;  // lanes that exist (a block size need not be a multiple of 32)
  alignas(64) unsigned char xch[2][kExchangeBytes];
};

// Who is running / blocked, packed in one word so that a single atomic read-modify-write both
// updates and observes it: running threads (still in the kernel body) in the high half,
// threads blocked at a barrier in the low half. Relaxed on purpose: the emulator's own
// bookkeeping must not add happens-before edges between emulated threads that CUDA would not
// have (ThreadSanitizer would then miss races), so it never shares a mutex across barriers.
constexpr std::uint64_t kRunningOne = std::uint64_t(1) << 32;
inline unsigned running_of(std::uint64_t s) { return static_cast<unsigned>(s >> 32); }
inline unsigned waiting_of(std::uint64_t s) { return static_cast<unsigned>(s & 0xffffffffu); }

// Bytes of global memory a kernel's code requested (loads, stores, atomics; every thread's
// access counted) and the FLOPs of its tile products, as csrc/cuda/memory.cuh reports them
// through ck_emu::count_*. Summed per launch (see traffic_begin).
struct Traffic {
  unsigned long long loaded = 0, stored = 0, atomic = 0, flops = 0;
  Traffic& operator+=(const Traffic& o) {
    loaded += o.loaded, stored += o.stored, atomic += o.atomic, flops += o.flops;
    return *this;
  }
};

struct Launch {
  dim3 grid{1, 1, 1}, block{1, 1, 1};
  std::mutex traffic_m;
  Traffic traffic;  // the threads' counters, added when each thread leaves the launch
  unsigned nthreads = 0, nwarps = 0;
  unsigned long long nblocks = 0;
  const std::function<void()>* body = nullptr;
  struct AlignedDelete {
    void operator()(unsigned char* p) const { ::operator delete(p, std::align_val_t(128)); }
  };
  std::unique_ptr<unsigned char, AlignedDelete> dyn_smem_storage;
  unsigned char* dyn_smem = nullptr;
  std::size_t dyn_smem_bytes = 0;

  // Start gate (its own mutex: passing it orders nothing a kernel does).
  std::mutex gate_m;
  std::condition_variable gate_cv;
  bool go = false, cancel = false;

  // Current block. Barriers have one mutex each: a warp barrier orders only the warp's lanes,
  // the block barrier all threads — the happens-before edges CUDA has.
  Barrier bar;
  std::unique_ptr<Warp[]> warps;
  std::atomic<std::uint64_t> state{0};
  std::atomic<bool> aborted{false};  // deadlock: unwind the block
  std::vector<unsigned long long> sync_count, warp_count;  // per thread, own writes only
  std::unique_ptr<std::atomic<const char*>[]> where;        // per thread: barrier it waits at
  std::string deadlock;                                     // written by the one declarer

  // End-of-block rendezvous and launch outcome (block_m).
  std::mutex block_m;
  std::condition_variable block_cv;
  unsigned finished = 0;
  unsigned long long block_gen = 0, cur_block = 0;
  bool stop = false;
  std::exception_ptr error;
  std::string divergence;
  unsigned long long diverged_blocks = 0;

#if CK_EMU_FIBERS
  // Fiber mode: the block's threads as contexts of the launching thread. A fiber runs until
  // it parks at a barrier or leaves the kernel; release() marks a phase's fibers runnable.
  ucontext_t scheduler{};
  std::vector<ucontext_t> fiber;
  std::vector<unsigned char> runnable;
  std::vector<unsigned char> finished_fiber;

  void unpark(Barrier& b) {
    for (unsigned t : b.parked) runnable[t] = 1;
    b.parked.clear();
  }
  // Back to the scheduler until a release (or the deadlock unwinding) makes tid runnable.
  void park(unsigned tid);
#endif

  static dim3 unflatten(unsigned long long i, const dim3& d) {
    return dim3(static_cast<unsigned>(i % d.x), static_cast<unsigned>((i / d.x) % d.y),
                static_cast<unsigned>(i / (static_cast<unsigned long long>(d.x) * d.y)));
  }
  std::string block_name() const {
    const dim3 b = unflatten(cur_block, grid);
    std::ostringstream s;
    s << "block (" << b.x << "," << b.y << "," << b.z << ")";
    return s.str();
  }

  // Only while no emulated thread is inside the kernel body (start, end-of-block rendezvous).
  void reset_block() {
    state.store(std::uint64_t(nthreads) * kRunningOne, std::memory_order_relaxed);
    aborted.store(false, std::memory_order_relaxed);
    bar.expected = nthreads;
    bar.arrived = 0;
    bar.acc = 0;
    for (unsigned w = 0; w < nwarps; ++w) {
      warps[w].bar.expected = warps[w].lanes;
      warps[w].bar.arrived = 0;
      warps[w].bar.acc = 0;
    }
    std::fill(sync_count.begin(), sync_count.end(), 0ull);
    std::fill(warp_count.begin(), warp_count.end(), 0ull);
    for (unsigned t = 0; t < nthreads; ++t) where[t].store(nullptr, std::memory_order_relaxed);
    finished = 0;
  }

  // With b.m held: complete the phase, waking its `waiters` blocked threads.
  void release(Barrier& b, unsigned waiters) {
    state.fetch_sub(waiters, std::memory_order_relaxed);
    b.result = b.acc;
    b.result_n = b.arrived;
    b.acc = 0;
    b.arrived = 0;
    ++b.gen;
#if CK_EMU_FIBERS
    unpark(b);
#else
    b.cv.notify_all();
#endif
  }

  // Every running thread is blocked at a barrier whose phase needs an arrival from a thread
  // that is itself blocked elsewhere (only running, unblocked threads arrive or return, and
  // there are none): unwind the block. Called with no barrier mutex held.
  void declare_deadlock(std::uint64_t s) {
    bool expect = false;
    if (!aborted.compare_exchange_strong(expect, true, std::memory_order_relaxed)) return;
    std::ostringstream msg;
    msg << "deadlock in " << block_name() << ": all " << running_of(s)
        << " running threads wait at barriers that cannot complete (";
    std::vector<const char*> w(nthreads);
    for (unsigned t = 0; t < nthreads; ++t) w[t] = where[t].load(std::memory_order_relaxed);
    bool first = true;
    for (unsigned t = 0; t < nthreads; ++t) {
      if (w[t] == nullptr) continue;
      bool seen = false;
      for (unsigned u = 0; u < t && !seen; ++u) seen = w[u] != nullptr && std::strcmp(w[u], w[t]) == 0;
      if (seen) continue;
      unsigned n = 0;
      for (unsigned u = t; u < nthreads; ++u) n += w[u] != nullptr && std::strcmp(w[u], w[t]) == 0;
      msg << (first ? "" : ", ") << n << " in " << w[t] << " e.g. thread " << t;
      first = false;
    }
    msg << "); " << (nthreads - running_of(s)) << " threads had returned";
    deadlock = msg.str();
    auto wake = [this](Barrier& b) {
#if CK_EMU_FIBERS
      unpark(b);
#else
      { std::lock_guard<std::mutex> g(b.m); }
      b.cv.notify_all();
#endif
    };
    wake(bar);
    for (unsigned w2 = 0; w2 < nwarps; ++w2) wake(warps[w2].bar);
  }

  long long arrive_and_wait(Barrier& b, unsigned tid, long long pred, const char* what,
                            long long* participants) {
    std::unique_lock<std::mutex> lk(b.m);
    if (aborted.load(std::memory_order_relaxed)) throw block_abort{};
    b.acc += pred;
    if (++b.arrived >= b.expected) {
      release(b, b.arrived - 1);
    } else {
      where[tid].store(what, std::memory_order_relaxed);
      const std::uint64_t s = state.fetch_add(1, std::memory_order_relaxed) + 1;
      const unsigned long long g = b.gen;
      if (waiting_of(s) == running_of(s)) {
        lk.unlock();
        declare_deadlock(s);
        lk.lock();
      }
#if CK_EMU_FIBERS
      if (b.gen == g && !aborted.load(std::memory_order_relaxed)) {
        b.parked.push_back(tid);
        lk.unlock();  // no fiber may find it held: they all run on this OS thread
        park(tid);
        lk.lock();
      }
#else
      b.cv.wait(lk, [&] { return b.gen != g || aborted.load(std::memory_order_relaxed); });
#endif
      where[tid].store(nullptr, std::memory_order_relaxed);
      if (b.gen == g) throw block_abort{};
    }
    if (participants != nullptr) *participants = b.result_n;
    return b.result;
  }

  // The thread leaves the kernel body (returned, threw, or was unwound): it stops taking part
  // in its block's and its warp's barriers; phases it was the last one missing complete.
  void drop(unsigned tid) {
    Barrier* bs[2] = {&bar, &warps[tid / kWarpSize].bar};
    for (Barrier* b : bs) {
      std::lock_guard<std::mutex> g(b->m);
      --b->expected;
      if (b->arrived > 0 && b->arrived >= b->expected) release(*b, b->arrived);
    }
    const std::uint64_t s = state.fetch_sub(kRunningOne, std::memory_order_relaxed) - kRunningOne;
    if (running_of(s) > 0 && waiting_of(s) == running_of(s)) declare_deadlock(s);
  }

  std::string check_divergence() const {
    std::ostringstream s;
    unsigned lo = 0, hi = 0;
    for (unsigned t = 1; t < nthreads; ++t) {
      if (sync_count[t] < sync_count[lo]) lo = t;
      if (sync_count[t] > sync_count[hi]) hi = t;
    }
    if (sync_count[lo] != sync_count[hi]) {
      s << "barrier divergence in " << block_name() << ": thread " << hi << " executed "
        << sync_count[hi] << " __syncthreads() but thread " << lo << " executed "
        << sync_count[lo] << " (it returned early or branched around a barrier)";
      return s.str();
    }
    for (unsigned w = 0; w < nwarps; ++w) {
      const unsigned t0 = w * kWarpSize, t1 = t0 + warps[w].lanes;
      lo = hi = t0;
      for (unsigned t = t0 + 1; t < t1; ++t) {
        if (warp_count[t] < warp_count[lo]) lo = t;
        if (warp_count[t] > warp_count[hi]) hi = t;
      }
      if (warp_count[lo] != warp_count[hi]) {
        s << "warp divergence in " << block_name() << ", warp " << w << ": lane " << hi - t0
          << " executed " << warp_count[hi]
          << " warp-synchronous operations (__syncwarp/shuffle/vote/wmma) but lane " << lo - t0
          << " executed " << warp_count[lo];
        return s.str();
      }
    }
    return {};
  }

  // With block_m held, by the last thread to finish the block.
  void end_block() {
    const bool was_aborted = aborted.load(std::memory_order_relaxed);
    if (!error && !was_aborted) {
      std::string d = check_divergence();
      if (!d.empty()) {
        ++diverged_blocks;
        if (divergence.empty()) divergence = std::move(d);
      }
    }
    if (error || was_aborted) stop = true;
    ++cur_block;
    reset_block();
    ++block_gen;
    block_cv.notify_all();
  }
};

// An asynchronous copy (cp.async) issued by a thread and not yet complete: the source bytes
// were read at issue (so a sanitizer reports a bad source address at the issuing line); they
// land in shared memory only when the thread waits for the copy's group (emu_ptx.h).
struct PendingCopy {
  void* dst;
  unsigned size;
  unsigned char data[16];
};

struct ThreadCtx {
  Launch* L;
  unsigned tid, lane, warp;
  unsigned xphase;  // exchange buffer parity of this lane's next collective
  Traffic traffic;  // this thread's counted global-memory bytes and FLOPs (own writes only)
  std::vector<PendingCopy> cp_pending;     // issued copies, oldest first
  std::vector<std::size_t> cp_group_ends;  // committed groups: end index into cp_pending
};

// Completes the oldest committed groups of the thread's asynchronous copies until at most
// `keep` committed groups are pending (all issued copies when keep < 0: the end of a block,
// where a GPU completes them too). Defined here for thread_main; used by emu_ptx.h.
inline void complete_copies(ThreadCtx& c, long keep) {
  std::size_t upto = 0;
  if (keep < 0) {
    upto = c.cp_pending.size();
    c.cp_group_ends.clear();
  } else {
    const std::size_t groups = c.cp_group_ends.size();
    if (groups <= static_cast<std::size_t>(keep)) return;
    const std::size_t done = groups - static_cast<std::size_t>(keep);
    upto = c.cp_group_ends[done - 1];
    c.cp_group_ends.erase(c.cp_group_ends.begin(), c.cp_group_ends.begin() + static_cast<std::ptrdiff_t>(done));
    for (std::size_t& e : c.cp_group_ends) e -= upto;
  }
  for (std::size_t i = 0; i < upto; ++i) std::memcpy(c.cp_pending[i].dst, c.cp_pending[i].data, c.cp_pending[i].size);
  c.cp_pending.erase(c.cp_pending.begin(), c.cp_pending.begin() + static_cast<std::ptrdiff_t>(upto));
}

inline thread_local ThreadCtx* tls = nullptr;

inline ThreadCtx& ctx(const char* what) {
  if (tls == nullptr) throw usage_error(std::string(what) + " called outside an emulated kernel launch");
  return *tls;
}

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

struct ErrorState {
  std::mutex m;
  std::string last;
  divergence_policy policy = divergence_policy::throw_error;
};
inline ErrorState& error_state() {
  static ErrorState s;
  return s;
}
inline void set_last_error(std::string msg) {
  std::lock_guard<std::mutex> g(error_state().m);
  error_state().last = std::move(msg);
}

}  // namespace detail

// How this build runs a block's threads: "fibers" or "os-threads" (see CK_EMU_FIBERS).
inline constexpr const char* kExecutionModel = CK_EMU_FIBERS ? "fibers" : "os-threads";

// Message of the most recent launch's failure; empty when it succeeded.
inline std::string last_error() {
  std::lock_guard<std::mutex> g(detail::error_state().m);
  return detail::error_state().last;
}
inline void clear_last_error() { detail::set_last_error({}); }
inline void set_divergence_policy(divergence_policy p) {
  std::lock_guard<std::mutex> g(detail::error_state().m);
  detail::error_state().policy = p;
}
inline divergence_policy get_divergence_policy() {
  std::lock_guard<std::mutex> g(detail::error_state().m);
  return detail::error_state().policy;
}
// Whether the calling thread is an emulated CUDA thread.
inline bool in_kernel() { return detail::tls != nullptr; }
// The launch's dynamic shared memory (shared_bytes of launch(); 16-byte aligned), the
// emulated form of `extern __shared__ T buf[];` (which cannot be spelled with the __shared__
// macro): `T* buf = ck_emu::dynamic_shared<T>();`.
template <typename T = unsigned char>
T* dynamic_shared() {
  return reinterpret_cast<T*>(detail::ctx("ck_emu::dynamic_shared").L->dyn_smem);
}

}  // namespace ck_emu

// The built-in variables, one per emulated thread (host threads see the defaults).
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim(1, 1, 1);
inline thread_local dim3 gridDim(1, 1, 1);
inline constexpr int warpSize = 32;

namespace ck_emu {
namespace detail {

// Thread tid's coordinates in the block (x fastest).
inline uint3 thread_index(unsigned tid, const dim3& block) {
  return uint3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
}

// One CUDA thread's run of the kernel body for the current block, in either execution model:
// the body, its pending copies landed, the thread dropped from its barriers. Returns what the
// body threw (nothing for the deadlock unwinding), for the caller to record.
inline std::exception_ptr run_body(Launch* L, ThreadCtx& c, unsigned tid) {
  std::exception_ptr err;
  try {
    (*L->body)();
  } catch (const block_abort&) {
  } catch (...) {
    err = std::current_exception();
  }
  complete_copies(c, -1);  // copies the thread never waited for still land (as on a GPU)
  L->drop(tid);
  return err;
}

inline void thread_main(Launch* L, unsigned tid) {
  ThreadCtx c{L, tid, tid % kWarpSize, tid / kWarpSize, 0, {}, {}, {}};
  {
    std::unique_lock<std::mutex> lk(L->gate_m);
    L->gate_cv.wait(lk, [&] { return L->go || L->cancel; });
    if (L->cancel) return;
  }
  tls = &c;
  threadIdx = thread_index(tid, L->block);
  blockDim = L->block;
  gridDim = L->grid;
  for (unsigned long long b = 0; b < L->nblocks; ++b) {
    const dim3 bi = Launch::unflatten(b, L->grid);
    blockIdx = uint3{bi.x, bi.y, bi.z};
    c.xphase = 0;
    const std::exception_ptr err = run_body(L, c, tid);
    std::unique_lock<std::mutex> lk(L->block_m);
    if (err && !L->error) L->error = err;
    if (++L->finished == L->nthreads) {
      L->end_block();
    } else {
      const unsigned long long g = L->block_gen;
      L->block_cv.wait(lk, [&] { return L->block_gen != g; });
    }
    if (L->stop) break;
  }
  tls = nullptr;
  std::lock_guard<std::mutex> g(L->traffic_m);
  L->traffic += c.traffic;
}

#if CK_EMU_FIBERS
// Fiber mode. Launches are serialized (launch_mutex), so one launch's fibers are the only
// ones: the entry function finds them here (makecontext passes only ints).
struct FiberLaunch {
  Launch* L = nullptr;
  std::vector<ThreadCtx> ctx;
};
inline FiberLaunch& fiber_launch() {
  static FiberLaunch f;
  return f;
}

// AddressSanitizer keeps per-stack state: it is told before every switch which stack comes
// next and, after it, that the switch happened (no-ops in other builds).
struct StackSpan {
  const void* bottom = nullptr;
  std::size_t size = 0;
};
inline StackSpan& scheduler_stack() {
  static StackSpan s;
  return s;
}
inline void before_switch([[maybe_unused]] void** fake_stack, [[maybe_unused]] const void* bottom,
                          [[maybe_unused]] std::size_t size) {
#if CK_EMU_ASAN_FIBERS
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#endif
}
inline void after_switch([[maybe_unused]] void* fake_stack, [[maybe_unused]] StackSpan* from) {
#if CK_EMU_ASAN_FIBERS
  __sanitizer_finish_switch_fiber(fake_stack, from != nullptr ? &from->bottom : nullptr,
                                  from != nullptr ? &from->size : nullptr);
#endif
}

inline void Launch::park(unsigned tid) {
  runnable[tid] = 0;
  void* fake = nullptr;
  before_switch(&fake, scheduler_stack().bottom, scheduler_stack().size);
  swapcontext(&fiber[tid], &scheduler);
  after_switch(fake, nullptr);
}

// One CUDA thread's part of the current block; returning resumes the scheduler (uc_link).
inline void fiber_main(int tid_int) {
  after_switch(nullptr, &scheduler_stack());  // entered from the scheduler's stack
  const unsigned tid = static_cast<unsigned>(tid_int);
  Launch* L = fiber_launch().L;
  const std::exception_ptr err = run_body(L, fiber_launch().ctx[tid], tid);
  if (err && !L->error) L->error = err;
  L->finished_fiber[tid] = 1;
  before_switch(nullptr, scheduler_stack().bottom, scheduler_stack().size);  // this stack ends
}

// Stacks of the block's fibers: mapped once per launch (reserved, touched lazily), with a
// guard page below each so that an overflow faults instead of corrupting its neighbour.
class FiberStacks {
 public:
  static constexpr std::size_t kBytes = 256 * 1024, kGuard = 4096;
  explicit FiberStacks(unsigned n) : n_(n) {
    base_ = static_cast<char*>(mmap(nullptr, n * kBytes, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (base_ == MAP_FAILED) throw launch_error("could not map the fiber stacks");
    for (unsigned t = 0; t < n; ++t) mprotect(base_ + t * kBytes, kGuard, PROT_NONE);
  }
  ~FiberStacks() { munmap(base_, n_ * kBytes); }
  FiberStacks(const FiberStacks&) = delete;
  FiberStacks& operator=(const FiberStacks&) = delete;
  void* stack(unsigned t) const { return base_ + t * kBytes + kGuard; }
  static constexpr std::size_t size() { return kBytes - kGuard; }

 private:
  unsigned n_;
  char* base_;
};

// Runs the launch's blocks in order; within a block, round-robin over the runnable fibers,
// each until it parks at a barrier or leaves the kernel. A release makes the phase's fibers
// runnable; when every running fiber waits, arrive_and_wait/drop declare the deadlock
// (exactly as with OS threads) and unpark them to unwind.
inline void run_fibers(Launch* L) {
  FiberLaunch& fl = fiber_launch();
  fl.L = L;
  fl.ctx.assign(L->nthreads, ThreadCtx{});
  FiberStacks stacks(L->nthreads);
  L->fiber.assign(L->nthreads, ucontext_t{});
  L->runnable.assign(L->nthreads, 0);
  L->finished_fiber.assign(L->nthreads, 0);
  for (unsigned t = 0; t < L->nthreads; ++t) fl.ctx[t] = ThreadCtx{L, t, t % kWarpSize, t / kWarpSize, 0, {}, {}, {}};
  blockDim = L->block;
  gridDim = L->grid;
  for (unsigned long long b = 0; b < L->nblocks; ++b) {
    const dim3 bi = Launch::unflatten(b, L->grid);
    for (unsigned t = 0; t < L->nthreads; ++t) {
      ucontext_t& uc = L->fiber[t];
      getcontext(&uc);
      uc.uc_stack.ss_sp = stacks.stack(t);
      uc.uc_stack.ss_size = FiberStacks::size();
      uc.uc_link = &L->scheduler;
      makecontext(&uc, reinterpret_cast<void (*)()>(&fiber_main), 1, static_cast<int>(t));
      fl.ctx[t].xphase = 0;
      L->runnable[t] = 1;
      L->finished_fiber[t] = 0;
    }
    for (unsigned live = L->nthreads; live > 0;) {
      bool ran = false;
      for (unsigned t = 0; t < L->nthreads; ++t) {
        if (!L->runnable[t] || L->finished_fiber[t]) continue;
        ran = true;
        tls = &fl.ctx[t];
        threadIdx = thread_index(t, L->block);
        blockIdx = uint3{bi.x, bi.y, bi.z};
        void* fake = nullptr;
        before_switch(&fake, stacks.stack(t), FiberStacks::size());
        swapcontext(&L->scheduler, &L->fiber[t]);
        after_switch(fake, nullptr);
        tls = nullptr;
        live -= L->finished_fiber[t];
      }
      if (!ran && live > 0)  // cannot happen: the last fiber to park declares the deadlock
        throw launch_error("ck_emu internal error: every fiber parked with no deadlock declared");
    }
    L->end_block();
    if (L->stop) break;
  }
  threadIdx = uint3{0, 0, 0};
  blockIdx = uint3{0, 0, 0};
  blockDim = dim3(1, 1, 1);
  gridDim = dim3(1, 1, 1);
  for (const ThreadCtx& c : fl.ctx) L->traffic += c.traffic;
  fl.ctx.clear();
  fl.L = nullptr;
}
#endif

inline std::string describe(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "non-standard exception";
  }
}

// One launch as count_cuda_launches (contrastive_kernels/proof/cuda_traffic.py) reports it.
struct LaunchRecord {
  std::string kernel;              // the kernel's name (launch_named), "" when not given
  unsigned long long programs = 0; // blocks in the grid
  unsigned threads = 0, num_warps = 0;
  std::size_t shared_bytes = 0;    // dynamic shared memory of the launch
  Traffic traffic;
};

struct TrafficLog {
  std::mutex m;
  int depth = 0;  // open traffic_begin() calls; the log is kept while one is open
  std::vector<LaunchRecord> records;
};
inline TrafficLog& traffic_log() {
  static TrafficLog log;
  return log;
}

inline void record_launch(const char* name, const Launch& L) {
  TrafficLog& log = traffic_log();
  std::lock_guard<std::mutex> g(log.m);
  if (log.depth == 0) return;
  LaunchRecord r;
  r.kernel = name != nullptr ? name : "";
  r.programs = L.nblocks;
  r.threads = L.nthreads;
  r.num_warps = L.nwarps;
  r.shared_bytes = L.dyn_smem_bytes;
  r.traffic = L.traffic;
  log.records.push_back(std::move(r));
}

// The most dynamic shared memory one block may have: an H100's 227 KB (what
// cudaFuncSetAttribute(..., MaxDynamicSharedMemorySize) allows there; an A100 allows 163 KB).
constexpr std::size_t kMaxDynamicShared = 227 * 1024;

inline void run(const dim3& grid, const dim3& block, std::size_t shared_bytes,
                const std::function<void()>& body, const char* name = nullptr) {
  if (tls != nullptr)
    throw usage_error("ck_emu::launch called from inside a kernel (dynamic parallelism is not emulated)");
  const unsigned long long nthreads = static_cast<unsigned long long>(block.x) * block.y * block.z;
  const unsigned long long nblocks = static_cast<unsigned long long>(grid.x) * grid.y * grid.z;
  if (nthreads == 0 || nthreads > kMaxBlockThreads || block.z > 64 || nblocks == 0 ||
      grid.y > 65535 || grid.z > 65535 || shared_bytes > kMaxDynamicShared) {
    std::ostringstream s;
    if (shared_bytes > kMaxDynamicShared)
      s << "too much dynamic shared memory: " << shared_bytes << " bytes > " << kMaxDynamicShared
        << "; ";
    s << "invalid configuration argument: grid (" << grid.x << "," << grid.y << "," << grid.z
      << "), block (" << block.x << "," << block.y << "," << block.z << ")";
    set_last_error(s.str());
    throw launch_error(s.str());
  }
  std::lock_guard<std::mutex> serial(launch_mutex());
  auto L = std::make_unique<Launch>();
  L->grid = grid;
  L->block = block;
  L->nthreads = static_cast<unsigned>(nthreads);
  L->nwarps = (L->nthreads + kWarpSize - 1) / kWarpSize;
  L->nblocks = nblocks;
  L->body = &body;
  if (shared_bytes > 0) {  // 128-byte aligned; exactly shared_bytes (AddressSanitizer sees overruns)
    L->dyn_smem_storage.reset(static_cast<unsigned char*>(
        ::operator new(shared_bytes, std::align_val_t(128))));
    L->dyn_smem = L->dyn_smem_storage.get();
    L->dyn_smem_bytes = shared_bytes;
  }
  L->warps.reset(new Warp[L->nwarps]());  // value-initialized: exchange buffers start zeroed
  for (unsigned w = 0; w < L->nwarps; ++w)
    L->warps[w].lanes = std::min(kWarpSize, L->nthreads - w * kWarpSize);
  L->sync_count.assign(L->nthreads, 0);
  L->warp_count.assign(L->nthreads, 0);
  L->where.reset(new std::atomic<const char*>[L->nthreads]);
  L->reset_block();

#if CK_EMU_FIBERS
  run_fibers(L.get());
#else
  std::vector<std::thread> threads;
  threads.reserve(L->nthreads);
  try {
    for (unsigned t = 0; t < L->nthreads; ++t) threads.emplace_back(thread_main, L.get(), t);
  } catch (const std::exception& e) {
    {
      std::lock_guard<std::mutex> g(L->gate_m);
      L->cancel = true;
    }
    L->gate_cv.notify_all();
    for (auto& t : threads) t.join();
    std::string msg = std::string("could not start ") + std::to_string(L->nthreads) +
                      " emulated threads: " + e.what();
    set_last_error(msg);
    throw launch_error(msg);
  }
  {
    std::lock_guard<std::mutex> g(L->gate_m);
    L->go = true;
  }
  L->gate_cv.notify_all();
  for (auto& t : threads) t.join();
#endif
  record_launch(name, *L);

  if (L->error) {
    set_last_error("kernel raised: " + describe(L->error));
    std::rethrow_exception(L->error);
  }
  if (!L->deadlock.empty()) {
    set_last_error(L->deadlock);
    throw deadlock_error(L->deadlock);
  }
  if (!L->divergence.empty()) {
    std::string msg = L->divergence;
    if (L->diverged_blocks > 1) msg += " (and " + std::to_string(L->diverged_blocks - 1) + " more blocks)";
    set_last_error(msg);
    if (get_divergence_policy() == divergence_policy::throw_error) throw barrier_divergence(msg);
    return;
  }
  set_last_error({});
}

inline dim3 to_dim3(const dim3& d) { return d; }
inline dim3 to_dim3(const uint3& d) { return dim3(d.x, d.y, d.z); }
template <typename I, typename = std::enable_if_t<std::is_integral_v<I>>>
dim3 to_dim3(I n) {
  bool negative = false;
  if constexpr (std::is_signed_v<I>) negative = n < 0;
  if (negative || static_cast<unsigned long long>(n) > 0xffffffffull)
    throw launch_error("invalid configuration argument: dimension " + std::to_string(n));
  return dim3(static_cast<unsigned>(n));
}

// ---- block and warp synchronisation ------------------------------------------------------
inline long long block_sync(long long pred, const char* what, long long* participants = nullptr) {
  ThreadCtx& c = ctx(what);
  ++c.L->sync_count[c.tid];
  return c.L->arrive_and_wait(c.L->bar, c.tid, pred, what, participants);
}

inline void warp_sync(ThreadCtx& c, const char* what) {
  ++c.L->warp_count[c.tid];
  c.L->arrive_and_wait(c.L->warps[c.warp].bar, c.tid, 0, what, nullptr);
}

inline unsigned existing_lanes_mask(const ThreadCtx& c) {
  const unsigned n = c.L->warps[c.warp].lanes;
  return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
}

// Only full-warp collectives are emulated: the mask must name every lane of the warp.
inline void check_mask(const ThreadCtx& c, unsigned mask, const char* what) {
  const unsigned full = existing_lanes_mask(c);
  if ((mask & full) != full) {
    std::ostringstream s;
    s << what << ": mask 0x" << std::hex << mask << " does not cover the whole warp (0x" << full
      << "); partial-warp collectives are not emulated";
    throw usage_error(s.str());
  }
}

// One collective: write this lane's part into the warp's current exchange buffer, meet the
// warp, read. Returns read(buf).
template <typename Write, typename Read>
auto warp_exchange(const char* what, Write&& write, Read&& read) {
  ThreadCtx& c = ctx(what);
  unsigned char* buf = c.L->warps[c.warp].xch[c.xphase++ & 1u];
  write(buf, c);
  warp_sync(c, what);
  return read(static_cast<const unsigned char*>(buf), c);
}

// src(lane) → source lane, or -1 for "own value".
template <typename T, typename Src>
T shuffle(unsigned mask, T v, int width, const char* what, Src&& src) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= kShuffleSlot,
                "shuffles move trivially copyable values of at most 16 bytes");
  ThreadCtx& c = ctx(what);
  check_mask(c, mask, what);
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
    throw usage_error(std::string(what) + ": width must be a power of two in [1, 32]");
  return warp_exchange(
      what, [&](unsigned char* buf, const ThreadCtx& tc) { std::memcpy(buf + tc.lane * kShuffleSlot, &v, sizeof(T)); },
      [&](const unsigned char* buf, const ThreadCtx& tc) {
        const int s = src(static_cast<int>(tc.lane));
        if (s < 0 || static_cast<unsigned>(s) >= tc.L->warps[tc.warp].lanes) return v;
        T r;
        std::memcpy(&r, buf + s * kShuffleSlot, sizeof(T));
        return r;
      });
}

inline unsigned ballot(unsigned mask, int pred, const char* what) {
  ThreadCtx& c = ctx(what);
  check_mask(c, mask, what);
  const unsigned char p = pred != 0;
  return warp_exchange(
      what, [&](unsigned char* buf, const ThreadCtx& tc) { buf[tc.lane] = p; },
      [&](const unsigned char* buf, const ThreadCtx& tc) {
        unsigned r = 0;
        const unsigned n = tc.L->warps[tc.warp].lanes;
        for (unsigned l = 0; l < n; ++l)
          if (buf[l] != 0 && ((mask >> l) & 1u)) r |= 1u << l;
        return r;
      });
}

}  // namespace detail

// Runs kernel(args...) on a grid × block of emulated threads (see the model above). grid
// and block: dim3, uint3 or an integer. shared_bytes: dynamic shared memory
// (ck_emu::dynamic_shared). stream: ignored (launches are synchronous). Each emulated thread
// calls the kernel with its own copy of the arguments (decayed at launch, converted to the
// parameter types at the call, as CUDA does). Throws: launch_error (bad configuration),
// deadlock_error, barrier_divergence (unless divergence_policy::record_only), or the first
// exception thrown by kernel code (e.g. usage_error). last_error() reports the outcome.
template <typename Kernel, typename Grid, typename Block, typename Stream, typename... Args>
void launch_named(const char* name, Kernel&& kernel, const Grid& grid, const Block& block,
                  std::size_t shared_bytes, Stream&& /*stream*/, Args&&... args) {
  const dim3 g = detail::to_dim3(grid), b = detail::to_dim3(block);
  std::decay_t<Kernel> fn(std::forward<Kernel>(kernel));
  const std::tuple<std::decay_t<Args>...> params(std::forward<Args>(args)...);
  const std::function<void()> body = [&fn, &params] { std::apply(fn, params); };
  detail::run(g, b, shared_bytes, body, name);
}
template <typename Kernel, typename Grid, typename Block, typename Stream, typename... Args>
void launch(Kernel&& kernel, const Grid& grid, const Block& block, std::size_t shared_bytes,
            Stream&& stream, Args&&... args) {
  launch_named(nullptr, std::forward<Kernel>(kernel), grid, block, shared_bytes,
               std::forward<Stream>(stream), std::forward<Args>(args)...);
}

// ---- traffic counting ------------------------------------------------------------------------
// Kernel code reports its global-memory accesses and tile-product FLOPs (csrc/cuda/memory.cuh
// calls these in the emulation build only); each thread counts its own, and a launch adds
// them up. traffic_begin() starts keeping one LaunchRecord per launch and returns a token;
// traffic_end(token) returns the launches since then (nested begin/end pairs each see theirs;
// the log is dropped when the outermost pair closes). Counting outside a kernel is a no-op.
using detail::LaunchRecord;
using detail::Traffic;
inline void count_load(std::size_t bytes) {
  if (detail::tls != nullptr) detail::tls->traffic.loaded += bytes;
}
inline void count_store(std::size_t bytes) {
  if (detail::tls != nullptr) detail::tls->traffic.stored += bytes;
}
inline void count_atomic(std::size_t bytes) {
  if (detail::tls != nullptr) detail::tls->traffic.atomic += bytes;
}
inline void count_flops(unsigned long long flops) {
  if (detail::tls != nullptr) detail::tls->traffic.flops += flops;
}
inline std::size_t traffic_begin() {
  detail::TrafficLog& log = detail::traffic_log();
  std::lock_guard<std::mutex> g(log.m);
  ++log.depth;
  return log.records.size();
}
inline std::vector<LaunchRecord> traffic_end(std::size_t token) {
  detail::TrafficLog& log = detail::traffic_log();
  std::lock_guard<std::mutex> g(log.m);
  std::vector<LaunchRecord> out;
  if (token < log.records.size())
    out.assign(log.records.begin() + static_cast<std::ptrdiff_t>(token), log.records.end());
  if (log.depth > 0 && --log.depth == 0) log.records.clear();
  return out;
}

// launcher(kernel, grid, block, shared_bytes, stream)(args...): the shape of a
// kernel<<<grid, block, shared_bytes, stream>>>(args...) launch, for mechanical rewriting.
template <typename Kernel>
struct launcher_t {
  Kernel kernel;
  dim3 grid, block;
  std::size_t shared_bytes;
  template <typename... Args>
  void operator()(Args&&... args) const {
    launch(kernel, grid, block, shared_bytes, nullptr, std::forward<Args>(args)...);
  }
};
template <typename Kernel, typename Grid, typename Block, typename Stream = std::nullptr_t>
launcher_t<std::decay_t<Kernel>> launcher(Kernel&& kernel, const Grid& grid, const Block& block,
                                          std::size_t shared_bytes = 0, Stream&& = nullptr) {
  return {std::forward<Kernel>(kernel), detail::to_dim3(grid), detail::to_dim3(block), shared_bytes};
}

}  // namespace ck_emu

// ---- CUDA device API -----------------------------------------------------------------------
inline void __syncthreads() { ck_emu::detail::block_sync(0, "__syncthreads()"); }
inline int __syncthreads_count(int pred) {
  return static_cast<int>(ck_emu::detail::block_sync(pred != 0, "__syncthreads_count()"));
}
inline int __syncthreads_and(int pred) {
  long long n = 0;
  const long long s = ck_emu::detail::block_sync(pred != 0, "__syncthreads_and()", &n);
  return s == n;
}
inline int __syncthreads_or(int pred) {
  return ck_emu::detail::block_sync(pred != 0, "__syncthreads_or()") != 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ck_emu::detail::ThreadCtx& c = ck_emu::detail::ctx("__syncwarp()");
  ck_emu::detail::check_mask(c, mask, "__syncwarp()");
  ck_emu::detail::warp_sync(c, "__syncwarp()");
}
inline unsigned __activemask() {
  return ck_emu::detail::existing_lanes_mask(ck_emu::detail::ctx("__activemask()"));
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return ck_emu::detail::shuffle(mask, var, width, "__shfl_sync()", [&](int lane) {
    return (lane & ~(width - 1)) + (src_lane & (width - 1));
  });
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ck_emu::detail::shuffle(mask, var, width, "__shfl_up_sync()", [&](int lane) {
    return static_cast<unsigned>(lane & (width - 1)) < delta ? -1 : lane - static_cast<int>(delta);
  });
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ck_emu::detail::shuffle(mask, var, width, "__shfl_down_sync()", [&](int lane) {
    return static_cast<unsigned>(lane & (width - 1)) + delta >= static_cast<unsigned>(width)
               ? -1
               : lane + static_cast<int>(delta);
  });
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return ck_emu::detail::shuffle(mask, var, width, "__shfl_xor_sync()", [&](int lane) {
    const int src = lane ^ (lane_mask & 31);
    // A later group of `width` lanes is out of reach: own value (CUDA semantics).
    return (src & ~(width - 1)) > (lane & ~(width - 1)) ? -1 : src;
  });
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return ck_emu::detail::ballot(mask, pred, "__ballot_sync()");
}
inline int __any_sync(unsigned mask, int pred) {
  return ck_emu::detail::ballot(mask, pred, "__any_sync()") != 0;
}
inline int __all_sync(unsigned mask, int pred) {
  ck_emu::detail::ThreadCtx& c = ck_emu::detail::ctx("__all_sync()");
  const unsigned want = mask & ck_emu::detail::existing_lanes_mask(c);
  return ck_emu::detail::ballot(mask, pred, "__all_sync()") == want;
}

// ---- atomics (relaxed, like CUDA's; std::atomic_ref) -----------------------------------------
namespace ck_emu::detail {
template <typename T>
T atomic_add(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
template <typename T, typename F>
T atomic_update(T* p, F&& f) {
  std::atomic_ref<T> a(*p);
  T old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, f(old), std::memory_order_relaxed)) {
  }
  return old;
}
}  // namespace ck_emu::detail

inline int atomicAdd(int* p, int v) { return ck_emu::detail::atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return ck_emu::detail::atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return ck_emu::detail::atomic_add(p, v);
}
inline float atomicAdd(float* p, float v) { return ck_emu::detail::atomic_add(p, v); }
inline double atomicAdd(double* p, double v) { return ck_emu::detail::atomic_add(p, v); }
inline int atomicSub(int* p, int v) { return ck_emu::detail::atomic_add(p, -v); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return ck_emu::detail::atomic_add(p, 0u - v); }

#define CK_EMU_ATOMIC_INT_OPS(T)                                                                      \
  inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v, std::memory_order_relaxed); } \
  inline T atomicCAS(T* p, T cmp, T v) {                                                              \
    std::atomic_ref<T>(*p).compare_exchange_strong(cmp, v, std::memory_order_relaxed);                \
    return cmp;                                                                                       \
  }                                                                                                   \
  inline T atomicMax(T* p, T v) {                                                                     \
    return ck_emu::detail::atomic_update(p, [v](T o) { return o < v ? v : o; });                      \
  }                                                                                                   \
  inline T atomicMin(T* p, T v) {                                                                     \
    return ck_emu::detail::atomic_update(p, [v](T o) { return v < o ? v : o; });                      \
  }                                                                                                   \
  inline T atomicAnd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_and(v, std::memory_order_relaxed); } \
  inline T atomicOr(T* p, T v) { return std::atomic_ref<T>(*p).fetch_or(v, std::memory_order_relaxed); }   \
  inline T atomicXor(T* p, T v) { return std::atomic_ref<T>(*p).fetch_xor(v, std::memory_order_relaxed); }
CK_EMU_ATOMIC_INT_OPS(int)
CK_EMU_ATOMIC_INT_OPS(unsigned)
CK_EMU_ATOMIC_INT_OPS(unsigned long long)
#undef CK_EMU_ATOMIC_INT_OPS
inline long long atomicMax(long long* p, long long v) {
  return ck_emu::detail::atomic_update(p, [v](long long o) { return o < v ? v : o; });
}
inline long long atomicMin(long long* p, long long v) {
  return ck_emu::detail::atomic_update(p, [v](long long o) { return v < o ? v : o; });
}
inline float atomicExch(float* p, float v) {
  return std::atomic_ref<float>(*p).exchange(v, std::memory_order_relaxed);
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { throw ck_emu::usage_error("__trap() executed"); }
inline long long clock64() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
inline void __nanosleep(unsigned ns) { std::this_thread::sleep_for(std::chrono::nanoseconds(ns)); }
