// Warp- and block-wide reductions with shuffles (CUDA sources only). The reduction order is
// fixed (shuffle-down by 16, 8, 4, 2, 1), so a result does not depend on scheduling.
#pragma once

#include "common/cuda_launch.h"

namespace sarl {

// Folds the warp's 32 values with `op`; the result is valid in lane 0.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_reduce_sum(T v) {
  return warp_reduce(v, [](T a, T b) { return a + b; });
}

// Block-wide reduction (blockDim.x a multiple of kWarpSize); the result is valid in thread 0.
// `shared` holds one value per warp; `identity` fills the slots of absent warps.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* shared, Op op, T identity) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_reduce(v, op);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / kWarpSize ? shared[lane] : identity;
  if (warp == 0) v = warp_reduce(v, op);
  __syncthreads();
  return v;
}

}  // namespace sarl
