// CUDA kernels of relay_gate and relay_gate_backward (schemas in csrc/sarl_ops.cpp, per-element
// math in relay_math.h, shared with relay_gate_cpu.cpp).
//
//   relay_gate           elementwise.
//   relay_gate_backward  a thread per pixel walks the channels: writes grad_x, keeps grad_s in a
//                        register and warp-reduces the channel partial into a per-warp slot; a
//                        second small kernel adds each (n, c)'s slots in a fixed order (no atomics:
//                        the result is deterministic, as torch.use_deterministic_algorithms wants);
//                        the relay gradient is a gather over each relay element's footprint.
// The per-pixel backward kernel's grid has a per-image y dimension and loops over the images
// beyond the grid's y limit, so any batch size runs, as on the CPU. Half and bfloat16
// accumulate in float32.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/cuda_launch.h"
#include "common/warp_reduce.h"
#include "relay/relay_checks.h"
#include "relay/relay_math.h"
#include "relay/relay_tensors.h"

namespace sarl {
namespace relay {
namespace {

using at::Tensor;

// relay may be nullptr (no relay); it is then [N, C, h, w], read by nearest upsampling to (H, W).
template <typename scalar_t, typename acc_t>
__global__ void gate_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c_logits,
                                    const scalar_t* __restrict__ s_logits, const scalar_t* __restrict__ relay,
                                    scalar_t* __restrict__ out, int64_t N, int64_t C, int64_t H, int64_t W,
                                    int64_t h, int64_t w) {
  const int64_t HW = H * W;
  SARL_CUDA_1D_KERNEL_LOOP(e, N * C * HW) {
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
  Tensor out = at::empty(x_in.sizes(), contiguous_options(x_in));
  if (out.numel() == 0) return out;
  const GateInputs in = contiguous_gate_inputs(x_in, c_in, s_in, relay_in);
  const int64_t N = in.x.size(0), C = in.x.size(1), H = in.x.size(2), W = in.x.size(3);
  const int64_t h = in.has_relay() ? in.relay.size(2) : 0, w = in.has_relay() ? in.relay.size(3) : 0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "relay_gate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gate_forward_kernel<scalar_t, acc_t><<<grid_blocks(out.numel()), kThreadsPerBlock, 0, stream>>>(
        in.x.const_data_ptr<scalar_t>(), in.channel_logits.const_data_ptr<scalar_t>(),
        in.spatial_logits.const_data_ptr<scalar_t>(), in.has_relay() ? in.relay.const_data_ptr<scalar_t>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), N, C, H, W, h, w);
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
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x;
  const bool active = p < HW;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
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
    channel_partial = warp_reduce_sum(channel_partial);
    if (lane == 0) grad_c_part[(n * C + c) * warps_total + warp] = channel_partial;
  }
  if (active) grad_s[n * HW + p] = static_cast<scalar_t>(acc_s * sigmoid_grad<acc_t>(sig_s));
}

// grid (pixel tiles, image_grid(N)); block kThreadsPerBlock.
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
  SARL_CUDA_1D_KERNEL_LOOP(t, NC) {
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
  SARL_CUDA_1D_KERNEL_LOOP(e, NC * h * w) {
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
  GateGrads grads = allocate_gate_grads(x_in, c_in, s_in, relay_in);
  if (!grads.needs_kernel) return grads.as_tuple();
  const Tensor grad_out = grad_out_in.contiguous();
  const GateInputs in = contiguous_gate_inputs(x_in, c_in, s_in, relay_in);
  const int64_t N = in.x.size(0), C = in.x.size(1), H = in.x.size(2), W = in.x.size(3), HW = H * W;
  const int64_t tiles = ceil_div(HW, kThreadsPerBlock), warps_total = tiles * kWarpsPerBlock;
  const auto opts = contiguous_options(in.x);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "relay_gate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Tensor grad_c_part = at::empty({N, C, warps_total}, opts.dtype(c10::CppTypeToScalarType<acc_t>::value));
    gate_backward_pixels_kernel<scalar_t, acc_t><<<dim3(tiles, image_grid(N)), kThreadsPerBlock, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), in.x.const_data_ptr<scalar_t>(),
        in.channel_logits.const_data_ptr<scalar_t>(), in.spatial_logits.const_data_ptr<scalar_t>(),
        grads.grad_x.mutable_data_ptr<scalar_t>(), grads.grad_spatial_logits.mutable_data_ptr<scalar_t>(),
        grad_c_part.mutable_data_ptr<acc_t>(), N, C, HW, warps_total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gate_backward_channel_kernel<scalar_t, acc_t><<<grid_blocks(N * C), kThreadsPerBlock, 0, stream>>>(
        grad_c_part.const_data_ptr<acc_t>(), in.channel_logits.const_data_ptr<scalar_t>(),
        grads.grad_channel_logits.mutable_data_ptr<scalar_t>(), N * C, warps_total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const Tensor& grad_relay = grads.grad_relay;
    if (in.has_relay() && grad_relay.numel() > 0) {
      gate_backward_relay_kernel<scalar_t, acc_t><<<grid_blocks(grad_relay.numel()), kThreadsPerBlock, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), grads.grad_relay.mutable_data_ptr<scalar_t>(), N * C, H, W,
          grad_relay.size(2), grad_relay.size(3));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return grads.as_tuple();
}

}  // namespace

TORCH_LIBRARY_IMPL(sarl, CUDA, m) {
  m.impl("relay_gate", &relay_gate_cuda);
  m.impl("relay_gate_backward", &relay_gate_backward_cuda);
}

}  // namespace relay
}  // namespace sarl
