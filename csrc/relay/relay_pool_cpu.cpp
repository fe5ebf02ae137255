// CPU kernels of relay_pool and relay_pool_backward (schemas in csrc/sarl_ops.cpp, per-element
// math in relay_math.h, shared with relay_pool_cuda.cu).
//
// Parallelism (at::parallel_for; the extension is built with OpenMP):
//   relay_pool          over (n, chunk of HW): each task streams all C planes of its chunk once,
//                       keeping the per-pixel mean/max over C in a small buffer, and leaves the
//                       chunk's per-channel partial sum/max, reduced over chunks afterwards.
//   relay_pool_backward over (n, c) planes: one write pass, no reduction.
// Half and bfloat16 accumulate in float32 (at::opmath_type).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "common/ceil_div.h"
#include "relay/relay_checks.h"
#include "relay/relay_math.h"
#include "relay/relay_tensors.h"

namespace sarl {
namespace relay {
namespace {

using at::Tensor;

// Continues a serial scan over src[begin, end) of a running (max, index) whose elements all come
// before `begin`: a later element must be strictly larger (or the first NaN) to win.
template <typename scalar_t, typename acc_t>
inline void scan_argmax(const scalar_t* src, int64_t begin, int64_t end, acc_t& m, int64_t& mi) {
  for (int64_t i = begin; i < end; ++i) {
    const acc_t v = static_cast<acc_t>(src[i]);
    if (max_replaces(v, m)) {
      m = v;
      mi = i;
    }
  }
}

// Max and first arg-max of src[0, len) (NaN wins, as torch.max), len >= 1. A single running
// (max, index) is a serial dependency chain; kLanes independent lanes (lane l sees i = l mod kLanes)
// vectorise, and merging them with pair_replaces (larger value, NaN, else the smaller index) gives
// the same result as the serial scan. Short rows are scanned serially.
template <typename scalar_t, typename acc_t>
inline void chunk_argmax(const scalar_t* src, int64_t len, acc_t& max_out, int64_t& idx_out) {
  constexpr int kLanes = 16;
  acc_t m = static_cast<acc_t>(src[0]);
  int64_t mi = 0;
  if (len < 2 * kLanes) {
    scan_argmax(src, 1, len, m, mi);
    max_out = m;
    idx_out = mi;
    return;
  }
  alignas(64) acc_t lane_max[kLanes];
  alignas(64) int64_t lane_idx[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    lane_max[l] = static_cast<acc_t>(src[l]);
    lane_idx[l] = l;
  }
  int64_t i = kLanes;
  for (; i + kLanes <= len; i += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const acc_t v = static_cast<acc_t>(src[i + l]);
      const bool take = max_replaces(v, lane_max[l]);
      lane_max[l] = take ? v : lane_max[l];
      lane_idx[l] = take ? i + l : lane_idx[l];
    }
  }
  m = lane_max[0];
  mi = lane_idx[0];
  for (int l = 1; l < kLanes; ++l) {
    if (pair_replaces(lane_max[l], lane_idx[l], m, mi)) {
      m = lane_max[l];
      mi = lane_idx[l];
    }
  }
  scan_argmax(src, i, len, m, mi);  // the tail comes after every lane's elements
  max_out = m;
  idx_out = mi;
}

template <typename scalar_t>
void pool_forward_kernel(const Tensor& g, Tensor& spatial, Tensor& channel, Tensor& spatial_argmax,
                         Tensor& channel_argmax) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = g.size(0), C = g.size(1), HW = g.size(2) * g.size(3);
  const int64_t threads = at::get_num_threads();
  // Chunks short enough for the per-pixel buffers to stay in L1/L2, and enough tasks to
  // keep every thread busy at small N.
  constexpr int64_t kMaxChunk = 4096;
  const int64_t chunks = std::max<int64_t>({ceil_div(HW, kMaxChunk), std::min(ceil_div(2 * threads, N),
                                                                              ceil_div(HW, 256)), 1});
  const int64_t chunk_len = ceil_div(HW, chunks);
  std::vector<acc_t> part_sum(N * chunks * C), part_max(N * chunks * C);
  std::vector<int64_t> part_idx(N * chunks * C);

  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  scalar_t* sp = spatial.mutable_data_ptr<scalar_t>();
  int64_t* sarg = spatial_argmax.mutable_data_ptr<int64_t>();
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);

  at::parallel_for(0, N * chunks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> sum_buf(chunk_len), max_buf(chunk_len);
    std::vector<int32_t> idx_buf(chunk_len);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / chunks, k = t % chunks;
      const int64_t p0 = k * chunk_len, len = std::min(chunk_len, HW - p0);
      if (len <= 0) {  // a chunk past the end (rounding): neutral partials, skipped by the reduction
        for (int64_t c = 0; c < C; ++c) {
          const int64_t j = (n * chunks + k) * C + c;
          part_sum[j] = acc_t(0);
          part_max[j] = -std::numeric_limits<acc_t>::infinity();
          part_idx[j] = std::numeric_limits<int64_t>::max();
        }
        continue;
      }
      acc_t* sum = sum_buf.data();
      acc_t* mx = max_buf.data();
      int32_t* ai = idx_buf.data();
      for (int64_t i = 0; i < len; ++i) {
        sum[i] = acc_t(0);
        mx[i] = -std::numeric_limits<acc_t>::infinity();
        ai[i] = 0;
      }
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* src = gp + (n * C + c) * HW + p0;
        const int32_t ci = static_cast<int32_t>(c);
        // Per-pixel mean/max over C: branch-free so the loop vectorises.
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
          const acc_t v = static_cast<acc_t>(src[i]);
          sum[i] += v;
          const bool take = max_replaces(v, mx[i]);
          mx[i] = take ? v : mx[i];
          ai[i] = take ? ci : ai[i];
        }
        // Per-channel partial avg/max over this chunk (the plane chunk is hot in L1 now).
        acc_t csum = acc_t(0);
#pragma omp simd reduction(+ : csum)
        for (int64_t i = 0; i < len; ++i) csum += static_cast<acc_t>(src[i]);
        acc_t cmax;
        int64_t cidx;
        chunk_argmax(src, len, cmax, cidx);
        const int64_t j = (n * chunks + k) * C + c;
        part_sum[j] = csum;
        part_max[j] = cmax;
        part_idx[j] = p0 + cidx;
      }
      scalar_t* mean_out = sp + n * 2 * HW + p0;
      scalar_t* max_out = mean_out + HW;
      int64_t* arg_out = sarg + n * HW + p0;
      for (int64_t i = 0; i < len; ++i) {
        mean_out[i] = static_cast<scalar_t>(sum[i] * inv_c);
        max_out[i] = static_cast<scalar_t>(mx[i]);
        arg_out[i] = ai[i];
      }
    }
  });

  // Reduce the chunk partials (chunks in ascending order: the first index wins ties).
  scalar_t* cp = channel.mutable_data_ptr<scalar_t>();
  int64_t* carg = channel_argmax.mutable_data_ptr<int64_t>();
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(HW);
  at::parallel_for(0, N * C, 256, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / C, c = t % C;
      acc_t s = acc_t(0), m = part_max[(n * chunks) * C + c];
      int64_t mi = part_idx[(n * chunks) * C + c];
      for (int64_t k = 0; k < chunks; ++k) {
        const int64_t j = (n * chunks + k) * C + c;
        s += part_sum[j];
        if (k > 0 && part_idx[j] != std::numeric_limits<int64_t>::max() && max_replaces(part_max[j], m)) {
          m = part_max[j];
          mi = part_idx[j];
        }
      }
      cp[n * 2 * C + c] = static_cast<scalar_t>(s * inv_hw);
      cp[n * 2 * C + C + c] = static_cast<scalar_t>(m);
      carg[t] = mi;
    }
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> relay_pool_cpu(const Tensor& g_in) {
  check_pool_input(g_in);
  const Tensor g = g_in.contiguous();
  PoolOutputs out = allocate_pool_outputs(g);
  if (!out.needs_kernel) return out.as_tuple();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "relay_pool_cpu", [&] {
    pool_forward_kernel<scalar_t>(g, out.spatial, out.channel, out.spatial_argmax, out.channel_argmax);
  });
  return out.as_tuple();
}

template <typename scalar_t>
void pool_backward_kernel(const Tensor& grad_spatial, const Tensor& grad_channel, const Tensor& spatial_argmax,
                          const Tensor& channel_argmax, Tensor& grad_g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = grad_g.size(0), C = grad_g.size(1), HW = grad_g.size(2) * grad_g.size(3);
  const scalar_t* gs = grad_spatial.const_data_ptr<scalar_t>();
  const scalar_t* gc = grad_channel.const_data_ptr<scalar_t>();
  const int64_t* sarg = spatial_argmax.const_data_ptr<int64_t>();
  const int64_t* carg = channel_argmax.const_data_ptr<int64_t>();
  scalar_t* out = grad_g.mutable_data_ptr<scalar_t>();
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C), inv_hw = acc_t(1) / static_cast<acc_t>(HW);
  at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / HW), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / C, c = t % C;
      const scalar_t* g_mean = gs + n * 2 * HW;
      const scalar_t* g_max = g_mean + HW;
      const int64_t* arg = sarg + n * HW;
      const acc_t g_avg_hw = static_cast<acc_t>(gc[n * 2 * C + c]);
      const acc_t g_max_hw = static_cast<acc_t>(gc[n * 2 * C + C + c]);
      const int64_t arg_hw = carg[t];
      scalar_t* dst = out + t * HW;
#pragma omp simd
      for (int64_t p = 0; p < HW; ++p) {
        dst[p] = static_cast<scalar_t>(pool_backward<acc_t>(static_cast<acc_t>(g_mean[p]),
                                                            static_cast<acc_t>(g_max[p]), arg[p] == c, g_avg_hw,
                                                            g_max_hw, p == arg_hw, inv_c, inv_hw));
      }
    }
  });
}

Tensor relay_pool_backward_cpu(const Tensor& grad_spatial_in, const Tensor& grad_channel_in,
                               const Tensor& spatial_argmax_in, const Tensor& channel_argmax_in) {
  check_pool_backward_inputs(grad_spatial_in, grad_channel_in, spatial_argmax_in, channel_argmax_in);
  const int64_t N = grad_spatial_in.size(0), h = grad_spatial_in.size(2), w = grad_spatial_in.size(3);
  const int64_t C = grad_channel_in.size(2);
  Tensor grad_g = at::empty({N, C, h, w}, contiguous_options(grad_spatial_in));
  if (grad_g.numel() == 0) return grad_g;
  const Tensor grad_spatial = grad_spatial_in.contiguous(), grad_channel = grad_channel_in.contiguous();
  const Tensor spatial_argmax = spatial_argmax_in.contiguous(), channel_argmax = channel_argmax_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_g.scalar_type(), "relay_pool_backward_cpu", [&] {
    pool_backward_kernel<scalar_t>(grad_spatial, grad_channel, spatial_argmax, channel_argmax, grad_g);
  });
  return grad_g;
}

}  // namespace

TORCH_LIBRARY_IMPL(sarl, CPU, m) {
  m.impl("relay_pool", &relay_pool_cpu);
  m.impl("relay_pool_backward", &relay_pool_backward_cpu);
}

}  // namespace relay
}  // namespace sarl
