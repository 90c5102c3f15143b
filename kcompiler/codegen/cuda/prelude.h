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
// loops. Kernels with barriers (the contraction templates, block reductions) need the
// barrier-split form instead: the regions between barriers as loops over the block's threads.
//
// Host builds use no fast-math: float32 functions and operations round as IEEE float, as
// nvcc's defaults (-prec-div, -prec-sqrt, no -use_fast_math) do on the device.
#ifndef KCOMPILER_CUDA_PRELUDE_H
#define KCOMPILER_CUDA_PRELUDE_H

#ifdef __CUDACC__

#define KC_DEVICE __device__ __forceinline__

#else  // host C++: the emulation

#include <math.h>
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

#endif  // __CUDACC__

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
