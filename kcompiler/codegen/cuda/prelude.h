// The prelude of every CUDA C source kcompiler renders (kcompiler/codegen/cuda/render.py puts
// it in front of the kernels). Under nvcc (__CUDACC__) it is plain CUDA plus kcompiler's few
// scalar helpers. Otherwise it defines what the rendered kernels use of CUDA as host C++, so
// the SAME text compiles with g++ and runs on the CPU (the emulation the tests use on machines
// without a GPU):
//
//   __global__ / __device__ / __forceinline__   nothing / nothing / inline
//   threadIdx, blockIdx, blockDim, gridDim       thread-local variables that kc_launch sets
//   atomicAdd, atomicCAS, __umulhi               the same operations, plain (one thread runs)
//   expf, logf, tanhf, ...                       the C library's float functions (<math.h>)
//
// kc_launch runs a launch serially: for every block, for every thread of the block, the
// kernel function once. That is a valid schedule only for kernels without __syncthreads (or
// warp-level operations): a thread then never waits for another, and the threads of a launch
// either touch disjoint elements or meet in an atomic operation. Every kernel rendered from a
// kernel description is such a kernel: its threads run independent iterations of parallel
// loops.
//
// Kernels with barriers (the contraction templates, block reductions) are written in the
// BARRIER-SPLIT form (MCUDA, Stratton et al.; PoCL's work-group functions) and launched with
// kc_launch_blocks, which calls the kernel once per block. The kernel's text:
//
//   KC_SHARED(float, tile, [16][17]);      // __shared__: one copy per block
//   KC_PER_THREAD(float, acc, [4][4]);     // a value that lives across a barrier
//   for (int k0 = 0; k0 < K; k0 += 16) {   // uniform control flow between regions
//       KC_THREADS {                       // a region: every thread of the block runs it
//           tile[threadIdx.y][threadIdx.x] = ...;
//           KC_MINE(acc)[i][j] += ...;     // this thread's copy
//       }
//       KC_SYNC;                           // __syncthreads()
//   }
//
// Index guards are written KC_GUARD(condition) (the condition itself), so that tests can
// remove each in turn and see the checks fail.
//
// Under nvcc: KC_THREADS is a plain block, KC_SYNC __syncthreads(), KC_PER_THREAD a local
// variable and KC_MINE(x) is x. On the host: KC_THREADS loops over the block's threads
// (threadIdx set for each, x fastest, as CUDA numbers them), KC_SYNC does nothing (the
// regions run one after another, which is what the barrier guarantees), KC_PER_THREAD
// declares one copy per thread (KC_MAX_THREADS of them) and KC_MINE(x) is the running
// thread's. Regions may not return early, and a barrier may only stand where every thread
// of the block reaches it (a CUDA rule anyway). Values a region computes and a later region
// reads must be KC_PER_THREAD or shared: a plain local inside a region dies with it on both
// sides, which keeps the two texts equivalent.
//
// Host builds use no fast-math: float32 functions and operations round as IEEE float, as
// nvcc's defaults (-prec-div, -prec-sqrt, no -use_fast_math) do on the device.
#ifndef KCOMPILER_CUDA_PRELUDE_H
#define KCOMPILER_CUDA_PRELUDE_H

#ifdef __CUDACC__

#define KC_DEVICE __device__ __forceinline__
#define KC_SHARED(type, name, dims) __shared__ type name dims
#define KC_THREADS
#define KC_SYNC __syncthreads()
#define KC_PER_THREAD(type, name, dims) type name dims
#define KC_MINE(name) name

#else  // host C++: the emulation

#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#define __global__
#define __device__
#define __forceinline__ inline
#define KC_DEVICE inline

struct kc_dim3 {
    unsigned int x, y, z;
};

inline thread_local kc_dim3 threadIdx, blockIdx, blockDim, gridDim;

template <typename T>
inline T atomicAdd(T* address, T value) {
    T old = *address;
    *address = old + value;
    return old;
}

template <typename T>
inline T atomicCAS(T* address, T compare, T value) {
    T old = *address;
    if (old == compare) *address = value;
    return old;
}

inline unsigned int __umulhi(unsigned int x, unsigned int y) {
    return (unsigned int)(((unsigned long long)x * y) >> 32);
}

// Launch ``kernel`` on ``blocks`` x ``threads`` (one dimension), thread after thread (see the
// comment at the top: only for kernels without barriers).
template <typename... Params, typename... Args>
inline void kc_launch(void (*kernel)(Params...), long long blocks, int threads, Args... args) {
    gridDim = {(unsigned int)blocks, 1, 1};
    blockDim = {(unsigned int)threads, 1, 1};
    for (long long b = 0; b < blocks; ++b) {
        for (int t = 0; t < threads; ++t) {
            blockIdx = {(unsigned int)b, 0, 0};
            threadIdx = {(unsigned int)t, 0, 0};
            kernel(args...);
        }
    }
}

// ---- the barrier-split form (see the top) ---------------------------------------------------
// Blocks may be 2-D or 3-D: threads are numbered x fastest, then y, then z; ``kc_thread`` is
// the running thread's number within its block.
//
// Shared memory is checked for races on the host: every element of a KC_SHARED array
// remembers the barrier interval (``kc_epoch``: it advances at every KC_SYNC and at every
// block) and the thread of its last write and of its reads. A thread reading an element
// another thread wrote in the same interval, or writing one another thread wrote or read in
// it, or reading one no thread of this block wrote, is a race on the GPU (the barrier that
// would order them is missing) even where the serial emulation happens to compute the right
// value: it is counted, and kc_emulation_races() reports the first. Removing a barrier from a
// template is therefore caught whether or not it changes the emulated result.
#define KC_MAX_THREADS 1024
inline thread_local int kc_thread;
inline thread_local long long kc_epoch = 0, kc_block_serial = 0, kc_race_count = 0;
inline thread_local char kc_race_message[256];

inline void kc_race(const char* what, const void* where, int other) {
    if (kc_race_count++ == 0)
        snprintf(kc_race_message, sizeof kc_race_message, "%s: shared element %p, block (%u, %u, %u), thread %d, "
                 "other thread %d", what, where, blockIdx.x, blockIdx.y, blockIdx.z, kc_thread, other);
}

template <typename T>
struct kc_shared {
    T value;
    long long block = -1, write_epoch = -1, read_epoch = -1;
    int writer = -1, reader = -1;  // reader -2: several threads read it in read_epoch

    T get() {
        if (block != kc_block_serial)
            kc_race("read of shared memory no thread of this block wrote", this, -1);
        else if (write_epoch == kc_epoch && writer != kc_thread)
            kc_race("read of shared memory another thread wrote since the last barrier", this, writer);
        if (read_epoch != kc_epoch) {
            read_epoch = kc_epoch;
            reader = kc_thread;
        } else if (reader != kc_thread) {
            reader = -2;
        }
        return value;
    }
    void set(T v) {
        if (block == kc_block_serial) {
            if (write_epoch == kc_epoch && writer != kc_thread)
                kc_race("write of shared memory another thread wrote since the last barrier", this, writer);
            else if (read_epoch == kc_epoch && reader != kc_thread)
                kc_race("write of shared memory another thread read since the last barrier", this, reader);
        }
        block = kc_block_serial;
        write_epoch = kc_epoch;
        writer = kc_thread;
        value = v;
    }
    operator T() { return get(); }
    kc_shared& operator=(T v) { set(v); return *this; }
    kc_shared& operator=(kc_shared& other) { set(other.get()); return *this; }
    kc_shared& operator+=(T v) { set(get() + v); return *this; }
    kc_shared& operator-=(T v) { set(get() - v); return *this; }
    kc_shared& operator*=(T v) { set(get() * v); return *this; }
};

inline bool kc_enter_thread(int t) {
    if (t >= (int)(blockDim.x * blockDim.y * blockDim.z)) return false;
    kc_thread = t;
    threadIdx = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
    return true;
}

#define KC_SHARED(type, name, dims) static thread_local kc_shared<type> name dims
#define KC_THREADS for (int kc_t = 0; kc_enter_thread(kc_t); ++kc_t)
#define KC_SYNC (++kc_epoch)
#define KC_PER_THREAD(type, name, dims) static thread_local type name[KC_MAX_THREADS] dims
#define KC_MINE(name) name[kc_thread]

// Launch a barrier-split kernel: once per block, on a grid of ``blocks`` (x, y, z) blocks of
// ``threads`` (x, y, z) threads.
template <typename... Params, typename... Args>
inline void kc_launch_blocks(void (*kernel)(Params...), const unsigned int* blocks, const unsigned int* threads,
                             Args... args) {
    gridDim = {blocks[0], blocks[1], blocks[2]};
    blockDim = {threads[0], threads[1], threads[2]};
    for (unsigned int z = 0; z < blocks[2]; ++z)
        for (unsigned int y = 0; y < blocks[1]; ++y)
            for (unsigned int x = 0; x < blocks[0]; ++x) {
                blockIdx = {x, y, z};
                ++kc_block_serial;
                ++kc_epoch;
                kernel(args...);
            }
}

// The races counted since the last call (and the first one's description, into ``message``).
extern "C" long long kc_emulation_races(char* message, int size) {
    long long count = kc_race_count;
    if (count && size > 0) snprintf(message, size, "%s", kc_race_message);
    kc_race_count = 0;
    return count;
}

// What templates use of CUDA's vector types and intrinsics.
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
template <typename T> inline T __ldg(const T* p) { return *p; }

#endif  // __CUDACC__

#define KC_GUARD(condition) (condition)

// numpy's maximum/minimum: NaN from either side propagates (fmaxf/fminf would drop it).
KC_DEVICE float kc_max(float x, float y) { return x >= y ? x : (isnan(x) ? x : y); }
KC_DEVICE float kc_min(float x, float y) { return x <= y ? x : (isnan(x) ? x : y); }
KC_DEVICE double kc_max(double x, double y) { return x >= y ? x : (isnan(x) ? x : y); }
KC_DEVICE double kc_min(double x, double y) { return x <= y ? x : (isnan(x) ? x : y); }

// The step's error record (passes/memory_plan.py): i32 status, i32 node id, i64 offending
// value. The first error wins: only the thread that turns the status from 0 to ``code``
// writes the node id and the value.
KC_DEVICE void kc_fail(int* error, int code, int node, long long value) {
    if (atomicCAS(error, 0, code) == 0) {
        error[1] = node;
        *reinterpret_cast<long long*>(error + 2) = value;
    }
}

#endif  // KCOMPILER_CUDA_PRELUDE_H
