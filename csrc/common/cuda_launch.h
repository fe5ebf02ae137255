// Launch geometry shared by every CUDA kernel of the library (CUDA sources only): the block
// size, the warp size, how many blocks a grid-stride launch gets, and the 1-D grid-stride loop.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/ceil_div.h"

namespace sarl {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kThreadsPerBlock / kWarpSize;

// A grid-stride launch needs no more blocks than this to fill any GPU: the loop covers the rest.
constexpr int64_t kMaxGridStrideBlocks = 65535LL * 8;
// Largest grid y (and z) extent: kernels with a per-image grid dimension loop over the images beyond it.
constexpr int64_t kMaxGridY = 65535;

// Blocks of kThreadsPerBlock threads for `work` items, at least 1 and at most `max_blocks`.
inline int grid_blocks(int64_t work, int64_t max_blocks = kMaxGridStrideBlocks) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(work, kThreadsPerBlock), max_blocks)));
}

// Grid y extent for N images (see kMaxGridY).
inline unsigned int image_grid(int64_t N) { return static_cast<unsigned int>(std::min<int64_t>(N, kMaxGridY)); }

}  // namespace sarl

// for (int64_t i = first thread's index; i < n; i += threads in the grid): a 1-D grid-stride loop
// with 64-bit indices, so any n runs with any grid size.
#define SARL_CUDA_1D_KERNEL_LOOP(i, n)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);           \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
