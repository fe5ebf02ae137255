// CUDA kernels of the SARL relay ops (schemas in csrc/sarl_ops.cpp, math in relay_math.h,
// shared with the CPU kernels in relay_cpu.cpp).
//
//   relay_pool           one pass over g: a thread per pixel walks the channels (coalesced across
//                        pixels) for the mean/max over C; each warp reduces its 32 pixels per
//                        channel (sum, max, first arg-max) into a partial; a second small kernel
//                        reduces the partials per (n, c).
//   relay_pool_backward  elementwise, no atomics.
//   relay_gate           elementwise.
//   relay_gate_backward  a thread per pixel walks the channels: writes grad_x, keeps grad_s in a
//                        register and warp-reduces the channel partial into a per-warp slot; a
//                        second small kernel adds each (n, c)'s slots in a fixed order (no atomics:
//                        the result is deterministic, as torch.use_deterministic_algorithms wants);
//                        the relay gradient is a gather over each relay element's footprint.
// Kernels with a per-image grid dimension loop over images beyond the grid's y limit (65535), so
// any batch size runs, as on the CPU. Half and bfloat16 accumulate in float32. Inputs are made
// contiguous NCHW first (channels-last inputs cost one copy).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <tuple>

#include "relay/relay_checks.h"
#include "relay/relay_math.h"

namespace sarl {
namespace relay {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int grid_size(int64_t work) {
  return static_cast<int>(std::min<int64_t>(ceil_div(work, kThreads), 65535LL * 8));
}

// Grid y extent of the per-image kernels: images beyond it are handled by the kernels' loop.
constexpr int64_t kMaxGridY = 65535;
unsigned int image_grid(int64_t N) { return static_cast<unsigned int>(std::min<int64_t>(N, kMaxGridY)); }

// ---------------------------------------------------------------------------------------------
// relay_pool
// ---------------------------------------------------------------------------------------------
template <typename acc_t>
__device__ __forceinline__ void warp_reduce_channel(acc_t& sum, acc_t& mx, int64_t& idx) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    sum += __shfl_down_sync(0xffffffffu, sum, offset);
    const acc_t other = __shfl_down_sync(0xffffffffu, mx, offset);
    const long long other_idx = __shfl_down_sync(0xffffffffu, static_cast<long long>(idx), offset);
    if (pair_replaces(other, static_cast<int64_t>(other_idx), mx, idx)) {
      mx = other;
      idx = other_idx;
    }
  }
}

// One image's share of relay_pool's pass: this block's pixel tile, all channels.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void pool_forward_image(const scalar_t* __restrict__ g, scalar_t* __restrict__ spatial,
                                                   int64_t* __restrict__ spatial_argmax,
                                                   acc_t* __restrict__ part_sum, acc_t* __restrict__ part_max,
                                                   int64_t* __restrict__ part_idx, int64_t n, int64_t C, int64_t HW,
                                                   int64_t warps_total) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = p < HW;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
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

// grid (pixel tiles, min(N, 65535)); block kThreads. Partials: [N, C, warps_total].
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

template <typename scalar_t, typename acc_t>
__global__ void pool_channel_reduce_kernel(const acc_t* __restrict__ part_sum, const acc_t* __restrict__ part_max,
                                           const int64_t* __restrict__ part_idx, scalar_t* __restrict__ channel,
                                           int64_t* __restrict__ channel_argmax, int64_t N, int64_t C, int64_t HW,
                                           int64_t warps_total) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < N * C;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
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
  const int64_t N = g.size(0), C = g.size(1), h = g.size(2), w = g.size(3), HW = h * w;
  auto opts = g.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor spatial = at::empty({N, 2, h, w}, opts);
  Tensor channel = at::empty({N, 2, C}, opts);
  Tensor spatial_argmax = at::empty({N, h, w}, opts.dtype(at::kLong));
  Tensor channel_argmax = at::empty({N, C}, opts.dtype(at::kLong));
  if (N == 0) return {spatial, channel, spatial_argmax, channel_argmax};
  if (C == 0 || HW == 0) {
    spatial.zero_();
    channel.zero_();
    spatial_argmax.fill_(-1);
    channel_argmax.fill_(-1);
    return {spatial, channel, spatial_argmax, channel_argmax};
  }
  const int64_t tiles = ceil_div(HW, kThreads);
  const int64_t warps_total = tiles * kWarpsPerBlock;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "relay_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    Tensor part_sum = at::empty({N, C, warps_total}, opts.dtype(acc_dtype));
    Tensor part_max = at::empty({N, C, warps_total}, opts.dtype(acc_dtype));
    Tensor part_idx = at::empty({N, C, warps_total}, opts.dtype(at::kLong));
    pool_forward_kernel<scalar_t, acc_t><<<dim3(tiles, image_grid(N)), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), spatial.mutable_data_ptr<scalar_t>(),
        spatial_argmax.mutable_data_ptr<int64_t>(), part_sum.mutable_data_ptr<acc_t>(),
        part_max.mutable_data_ptr<acc_t>(), part_idx.mutable_data_ptr<int64_t>(), N, C, HW, warps_total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pool_channel_reduce_kernel<scalar_t, acc_t><<<grid_size(N * C), kThreads, 0, stream>>>(
        part_sum.const_data_ptr<acc_t>(), part_max.const_data_ptr<acc_t>(), part_idx.const_data_ptr<int64_t>(),
        channel.mutable_data_ptr<scalar_t>(), channel_argmax.mutable_data_ptr<int64_t>(), N, C, HW, warps_total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {spatial, channel, spatial_argmax, channel_argmax};
}

template <typename scalar_t, typename acc_t>
__global__ void pool_backward_kernel(const scalar_t* __restrict__ grad_spatial,
                                     const scalar_t* __restrict__ grad_channel,
                                     const int64_t* __restrict__ spatial_argmax,
                                     const int64_t* __restrict__ channel_argmax, scalar_t* __restrict__ grad_g,
                                     int64_t N, int64_t C, int64_t HW) {
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C), inv_hw = acc_t(1) / static_cast<acc_t>(HW);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < N * C * HW;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
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
  Tensor grad_g = at::empty({N, C, h, w}, grad_spatial_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad_g.numel() == 0) return grad_g;
  const Tensor gs = grad_spatial_in.contiguous(), gc = grad_channel_in.contiguous();
  const Tensor sarg = spatial_argmax_in.contiguous(), carg = channel_argmax_in.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_g.scalar_type(), "relay_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pool_backward_kernel<scalar_t, acc_t><<<grid_size(grad_g.numel()), kThreads, 0, stream>>>(
        gs.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(), sarg.const_data_ptr<int64_t>(),
        carg.const_data_ptr<int64_t>(), grad_g.mutable_data_ptr<scalar_t>(), N, C, h * w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_g;
}

// ---------------------------------------------------------------------------------------------
// relay_gate
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
__global__ void gate_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c_logits,
                                    const scalar_t* __restrict__ s_logits, const scalar_t* __restrict__ relay,
                                    scalar_t* __restrict__ out, int64_t N, int64_t C, int64_t H, int64_t W,
                                    int64_t h, int64_t w) {
  const int64_t HW = H * W;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < N * C * HW;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = e % HW, nc = e / HW, n = nc / C;
    const acc_t sig_c = sigmoid<acc_t>(static_cast<acc_t>(c_logits[nc]));
    const acc_t sig_s = sigmoid<acc_t>(static_cast<acc_t>(s_logits[n * HW + p]));
    acc_t r = acc_t(0);
    if (relay != nullptr) {
      const int64_t ry = nearest_source_index(p / W, h, H), rx = nearest_source_index(p % W, w, W);
      r = static_cast<acc_t>(relay[(nc * h + ry) * w + rx]);
    }
    out[e] = static_cast<scalar_t>(gate_forward<acc_t>(static_cast<acc_t>(x[e]), sig_c, sig_s, r));
  }
}

Tensor relay_gate_cuda(const Tensor& x_in, const Tensor& c_in, const Tensor& s_in,
                       const std::optional<Tensor>& relay_in) {
  check_gate_inputs(x_in, c_in, s_in, relay_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  Tensor out = at::empty(x_in.sizes(), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const Tensor x = x_in.contiguous(), c = c_in.contiguous(), s = s_in.contiguous();
  const bool has_relay = relay_in.has_value() && relay_in->defined();
  const Tensor relay = has_relay ? relay_in->contiguous() : Tensor();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t h = has_relay ? relay.size(2) : 0, w = has_relay ? relay.size(3) : 0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relay_gate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gate_forward_kernel<scalar_t, acc_t><<<grid_size(out.numel()), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
        has_relay ? relay.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), N, C, H, W, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// One image's share of the gate backward: this block's pixel tile, all channels. The channel
// partial of each warp goes to its own slot of grad_c_part [N, C, warps_total] (summed later in a
// fixed order).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void gate_backward_image(const scalar_t* __restrict__ grad_out,
                                                    const scalar_t* __restrict__ x,
                                                    const scalar_t* __restrict__ c_logits,
                                                    const scalar_t* __restrict__ s_logits,
                                                    scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_s,
                                                    acc_t* __restrict__ grad_c_part, int64_t n, int64_t C,
                                                    int64_t HW, int64_t warps_total) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = p < HW;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const acc_t sig_s = active ? sigmoid<acc_t>(static_cast<acc_t>(s_logits[n * HW + p])) : acc_t(0);
  acc_t acc_s = acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t sig_c = sigmoid<acc_t>(static_cast<acc_t>(c_logits[n * C + c]));
    acc_t channel_partial = acc_t(0);
    if (active) {
      const int64_t e = (n * C + c) * HW + p;
      const GateGrad<acc_t> r =
          gate_backward<acc_t>(static_cast<acc_t>(grad_out[e]), static_cast<acc_t>(x[e]), sig_c, sig_s);
      grad_x[e] = static_cast<scalar_t>(r.grad_x);
      acc_s += r.spatial_partial;
      channel_partial = r.channel_partial;
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2)
      channel_partial += __shfl_down_sync(0xffffffffu, channel_partial, offset);
    if (lane == 0) grad_c_part[(n * C + c) * warps_total + warp] = channel_partial;
  }
  if (active) grad_s[n * HW + p] = static_cast<scalar_t>(acc_s * sigmoid_grad<acc_t>(sig_s));
}

// grid (pixel tiles, min(N, 65535)); block kThreads.
template <typename scalar_t, typename acc_t>
__global__ void gate_backward_pixels_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                                            const scalar_t* __restrict__ c_logits,
                                            const scalar_t* __restrict__ s_logits, scalar_t* __restrict__ grad_x,
                                            scalar_t* __restrict__ grad_s, acc_t* __restrict__ grad_c_part, int64_t N,
                                            int64_t C, int64_t HW, int64_t warps_total) {
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    gate_backward_image<scalar_t, acc_t>(grad_out, x, c_logits, s_logits, grad_x, grad_s, grad_c_part, n, C, HW,
                                         warps_total);
  }
}

// grad_c[n, c] = sigmoid'(c) * (sum of the warp slots of (n, c), in slot order).
template <typename scalar_t, typename acc_t>
__global__ void gate_backward_channel_kernel(const acc_t* __restrict__ grad_c_part,
                                             const scalar_t* __restrict__ c_logits, scalar_t* __restrict__ grad_c,
                                             int64_t NC, int64_t warps_total) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < NC;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t sum = acc_t(0);
    for (int64_t k = 0; k < warps_total; ++k) sum += grad_c_part[t * warps_total + k];
    const acc_t sig_c = sigmoid<acc_t>(static_cast<acc_t>(c_logits[t]));
    grad_c[t] = static_cast<scalar_t>(sum * sigmoid_grad<acc_t>(sig_c));
  }
}

// A thread per relay element gathers grad_out over its footprint (deterministic, no atomics).
template <typename scalar_t, typename acc_t>
__global__ void gate_backward_relay_kernel(const scalar_t* __restrict__ grad_out, scalar_t* __restrict__ grad_relay,
                                           int64_t NC, int64_t H, int64_t W, int64_t h, int64_t w) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < NC * h * w;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t qx = e % w, qy = (e / w) % h, nc = e / (h * w);
    const int64_t y0 = footprint_begin(qy, h, H), y1 = footprint_begin(qy + 1, h, H);
    const int64_t x0 = footprint_begin(qx, w, W), x1 = footprint_begin(qx + 1, w, W);
    acc_t sum = acc_t(0);
    const scalar_t* plane = grad_out + nc * H * W;
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t xx = x0; xx < x1; ++xx) sum += static_cast<acc_t>(plane[y * W + xx]);
    grad_relay[e] = static_cast<scalar_t>(sum);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> relay_gate_backward_cuda(const Tensor& grad_out_in, const Tensor& x_in,
                                                                    const Tensor& c_in, const Tensor& s_in,
                                                                    const std::optional<Tensor>& relay_in) {
  check_gate_backward_inputs(grad_out_in, x_in, c_in, s_in, relay_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  const bool has_relay = relay_in.has_value() && relay_in->defined();
  auto opts = x_in.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor grad_x = at::empty(x_in.sizes(), opts);
  Tensor grad_c = at::empty(c_in.sizes(), opts);
  Tensor grad_s = at::empty(s_in.sizes(), opts);
  Tensor grad_relay = has_relay ? at::empty(relay_in->sizes(), opts) : at::empty({0}, opts);
  if (x_in.numel() == 0) {
    grad_c.zero_();
    grad_s.zero_();
    grad_relay.zero_();
    return {grad_x, grad_c, grad_s, grad_relay};
  }
  const Tensor grad_out = grad_out_in.contiguous(), x = x_in.contiguous(), c = c_in.contiguous(),
               s = s_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relay_gate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t tiles = ceil_div(HW, kThreads), warps_total = tiles * kWarpsPerBlock;
    Tensor grad_c_part = at::empty({N, C, warps_total}, opts.dtype(c10::CppTypeToScalarType<acc_t>::value));
    gate_backward_pixels_kernel<scalar_t, acc_t><<<dim3(tiles, image_grid(N)), kThreads, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
        s.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(), grad_s.mutable_data_ptr<scalar_t>(),
        grad_c_part.mutable_data_ptr<acc_t>(), N, C, HW, warps_total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gate_backward_channel_kernel<scalar_t, acc_t><<<grid_size(N * C), kThreads, 0, stream>>>(
        grad_c_part.const_data_ptr<acc_t>(), c.const_data_ptr<scalar_t>(), grad_c.mutable_data_ptr<scalar_t>(),
        N * C, warps_total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (has_relay && grad_relay.numel() > 0) {
      gate_backward_relay_kernel<scalar_t, acc_t><<<grid_size(grad_relay.numel()), kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), grad_relay.mutable_data_ptr<scalar_t>(), N * C, H, W,
          grad_relay.size(2), grad_relay.size(3));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_x, grad_c, grad_s, grad_relay};
}

}  // namespace

TORCH_LIBRARY_IMPL(sarl, CUDA, m) {
  m.impl("relay_pool", &relay_pool_cuda);
  m.impl("relay_pool_backward", &relay_pool_backward_cuda);
  m.impl("relay_gate", &relay_gate_cuda);
  m.impl("relay_gate_backward", &relay_gate_backward_cuda);
}

}  // namespace relay
}  // namespace sarl
