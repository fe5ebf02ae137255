// CUDA kernels of relay_pool and relay_pool_backward (schemas in csrc/sarl_ops.cpp, per-element
// math in relay_math.h, shared with relay_pool_cpu.cpp).
//
//   relay_pool           one pass over g: a thread per pixel walks the channels (coalesced across
//                        pixels) for the mean/max over C; each warp reduces its 32 pixels per
//                        channel (sum, max, first arg-max) into a partial; a second small kernel
//                        reduces the partials per (n, c).
//   relay_pool_backward  elementwise, no atomics.
// The forward's grid has a per-image y dimension and loops over the images beyond the grid's y
// limit, so any batch size runs, as on the CPU. Half and bfloat16 accumulate in float32.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "common/cuda_launch.h"
#include "relay/relay_checks.h"
#include "relay/relay_math.h"
#include "relay/relay_tensors.h"

namespace sarl {
namespace relay {
namespace {

using at::Tensor;

// Warp reduction of one channel's (sum, max, arg-max) over the warp's pixels; valid in lane 0.
template <typename acc_t>
__device__ __forceinline__ void warp_reduce_channel(acc_t& sum, acc_t& mx, int64_t& idx) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    sum += __shfl_down_sync(0xffffffffu, sum, offset);
    const acc_t other = __shfl_down_sync(0xffffffffu, mx, offset);
    const long long other_idx = __shfl_down_sync(0xffffffffu, static_cast<long long>(idx), offset);
    if (pair_replaces(other, static_cast<int64_t>(other_idx), mx, idx)) {
      mx = other;
      idx = other_idx;
    }
  }
}

// One image's share of relay_pool's pass: this block's pixel tile, all channels. Threads past
// the last pixel take part in the warp reductions with neutral values (0, -inf, index max).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void pool_forward_image(const scalar_t* __restrict__ g, scalar_t* __restrict__ spatial,
                                                   int64_t* __restrict__ spatial_argmax,
                                                   acc_t* __restrict__ part_sum, acc_t* __restrict__ part_max,
                                                   int64_t* __restrict__ part_idx, int64_t n, int64_t C, int64_t HW,
                                                   int64_t warps_total) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x;
  const bool active = p < HW;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  acc_t sum_c = acc_t(0), max_c = -std::numeric_limits<acc_t>::infinity();
  int64_t arg_c = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t v = active ? static_cast<acc_t>(g[(n * C + c) * HW + p]) : acc_t(0);
    if (active) {
      sum_c += v;
      if (max_replaces(v, max_c)) {
        max_c = v;
        arg_c = c;
      }
    }
    acc_t s = active ? v : acc_t(0);
    acc_t m = active ? v : -std::numeric_limits<acc_t>::infinity();
    int64_t i = active ? p : std::numeric_limits<int64_t>::max();
    warp_reduce_channel(s, m, i);
    if (lane == 0) {
      const int64_t j = (n * C + c) * warps_total + warp;
      part_sum[j] = s;
      part_max[j] = m;
      part_idx[j] = i;
    }
  }
  if (active) {
    spatial[n * 2 * HW + p] = static_cast<scalar_t>(sum_c / static_cast<acc_t>(C));
    spatial[n * 2 * HW + HW + p] = static_cast<scalar_t>(max_c);
    spatial_argmax[n * HW + p] = arg_c;
  }
}

// grid (pixel tiles, image_grid(N)); block kThreadsPerBlock. Partials: [N, C, warps_total].
template <typename scalar_t, typename acc_t>
__global__ void pool_forward_kernel(const scalar_t* __restrict__ g, scalar_t* __restrict__ spatial,
                                    int64_t* __restrict__ spatial_argmax, acc_t* __restrict__ part_sum,
                                    acc_t* __restrict__ part_max, int64_t* __restrict__ part_idx, int64_t N,
                                    int64_t C, int64_t HW, int64_t warps_total) {
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    pool_forward_image<scalar_t, acc_t>(g, spatial, spatial_argmax, part_sum, part_max, part_idx, n, C, HW,
                                        warps_total);
  }
}

// channel[n, :, c] = (avg, max) over the warp partials of (n, c), in warp order.
template <typename scalar_t, typename acc_t>
__global__ void pool_channel_reduce_kernel(const acc_t* __restrict__ part_sum, const acc_t* __restrict__ part_max,
                                           const int64_t* __restrict__ part_idx, scalar_t* __restrict__ channel,
                                           int64_t* __restrict__ channel_argmax, int64_t N, int64_t C, int64_t HW,
                                           int64_t warps_total) {
  SARL_CUDA_1D_KERNEL_LOOP(t, N * C) {
    const int64_t n = t / C, c = t % C;
    const int64_t base = t * warps_total;
    acc_t s = acc_t(0), m = part_max[base];
    int64_t mi = part_idx[base];
    for (int64_t k = 0; k < warps_total; ++k) {
      s += part_sum[base + k];
      if (k > 0 && pair_replaces(part_max[base + k], part_idx[base + k], m, mi)) {
        m = part_max[base + k];
        mi = part_idx[base + k];
      }
    }
    channel[n * 2 * C + c] = static_cast<scalar_t>(s / static_cast<acc_t>(HW));
    channel[n * 2 * C + C + c] = static_cast<scalar_t>(m);
    channel_argmax[t] = mi;
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> relay_pool_cuda(const Tensor& g_in) {
  check_pool_input(g_in);
  c10::cuda::CUDAGuard guard(g_in.device());
  const Tensor g = g_in.contiguous();
  PoolOutputs out = allocate_pool_outputs(g);
  if (!out.needs_kernel) return out.as_tuple();
  const int64_t N = g.size(0), C = g.size(1), HW = g.size(2) * g.size(3);
  const int64_t tiles = ceil_div(HW, kThreadsPerBlock);
  const int64_t warps_total = tiles * kWarpsPerBlock;
  const auto opts = contiguous_options(g);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "relay_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    Tensor part_sum = at::empty({N, C, warps_total}, opts.dtype(acc_dtype));
    Tensor part_max = at::empty({N, C, warps_total}, opts.dtype(acc_dtype));
    Tensor part_idx = at::empty({N, C, warps_total}, opts.dtype(at::kLong));
    pool_forward_kernel<scalar_t, acc_t><<<dim3(tiles, image_grid(N)), kThreadsPerBlock, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), out.spatial.mutable_data_ptr<scalar_t>(),
        out.spatial_argmax.mutable_data_ptr<int64_t>(), part_sum.mutable_data_ptr<acc_t>(),
        part_max.mutable_data_ptr<acc_t>(), part_idx.mutable_data_ptr<int64_t>(), N, C, HW, warps_total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pool_channel_reduce_kernel<scalar_t, acc_t><<<grid_blocks(N * C), kThreadsPerBlock, 0, stream>>>(
        part_sum.const_data_ptr<acc_t>(), part_max.const_data_ptr<acc_t>(), part_idx.const_data_ptr<int64_t>(),
        out.channel.mutable_data_ptr<scalar_t>(), out.channel_argmax.mutable_data_ptr<int64_t>(), N, C, HW,
        warps_total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.as_tuple();
}

template <typename scalar_t, typename acc_t>
__global__ void pool_backward_kernel(const scalar_t* __restrict__ grad_spatial,
                                     const scalar_t* __restrict__ grad_channel,
                                     const int64_t* __restrict__ spatial_argmax,
                                     const int64_t* __restrict__ channel_argmax, scalar_t* __restrict__ grad_g,
                                     int64_t N, int64_t C, int64_t HW) {
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C), inv_hw = acc_t(1) / static_cast<acc_t>(HW);
  SARL_CUDA_1D_KERNEL_LOOP(e, N * C * HW) {
    const int64_t p = e % HW, nc = e / HW, c = nc % C, n = nc / C;
    grad_g[e] = static_cast<scalar_t>(pool_backward<acc_t>(
        static_cast<acc_t>(grad_spatial[n * 2 * HW + p]), static_cast<acc_t>(grad_spatial[n * 2 * HW + HW + p]),
        spatial_argmax[n * HW + p] == c, static_cast<acc_t>(grad_channel[n * 2 * C + c]),
        static_cast<acc_t>(grad_channel[n * 2 * C + C + c]), channel_argmax[nc] == p, inv_c, inv_hw));
  }
}

Tensor relay_pool_backward_cuda(const Tensor& grad_spatial_in, const Tensor& grad_channel_in,
                                const Tensor& spatial_argmax_in, const Tensor& channel_argmax_in) {
  check_pool_backward_inputs(grad_spatial_in, grad_channel_in, spatial_argmax_in, channel_argmax_in);
  c10::cuda::CUDAGuard guard(grad_spatial_in.device());
  const int64_t N = grad_spatial_in.size(0), h = grad_spatial_in.size(2), w = grad_spatial_in.size(3);
  const int64_t C = grad_channel_in.size(2);
  Tensor grad_g = at::empty({N, C, h, w}, contiguous_options(grad_spatial_in));
  if (grad_g.numel() == 0) return grad_g;
  const Tensor gs = grad_spatial_in.contiguous(), gc = grad_channel_in.contiguous();
  const Tensor sarg = spatial_argmax_in.contiguous(), carg = channel_argmax_in.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_g.scalar_type(), "relay_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pool_backward_kernel<scalar_t, acc_t><<<grid_blocks(grad_g.numel()), kThreadsPerBlock, 0, stream>>>(
        gs.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(), sarg.const_data_ptr<int64_t>(),
        carg.const_data_ptr<int64_t>(), grad_g.mutable_data_ptr<scalar_t>(), N, C, h * w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_g;
}

}  // namespace

TORCH_LIBRARY_IMPL(sarl, CUDA, m) {
  m.impl("relay_pool", &relay_pool_cuda);
  m.impl("relay_pool_backward", &relay_pool_backward_cuda);
}

}  // namespace relay
}  // namespace sarl
