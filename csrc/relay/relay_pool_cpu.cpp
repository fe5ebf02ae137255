// CPU kernels of relay_pool and relay_pool_backward (schemas in csrc/sarl_ops.cpp, per-element
// math in relay_math.h, shared with relay_pool_cuda.cu).
//
// Parallelism (at::parallel_for; the extension is built with OpenMP):
//   relay_pool          over (n, block of HW pixels): each task streams its block's run of all C
//                       planes once (c outer, pixels inner), folding each run into the per-pixel
//                       sum/max/arg-max over C (a block-sized buffer that stays in L1/L2) and into
//                       the run's own sum/max/arg-max over HW in the same loop; the per-block
//                       partials over HW are reduced over blocks afterwards.
//   relay_pool_backward over (n, c) planes: one streaming write of each plane, then the few
//                       arg-max elements rewritten (pixels grouped by arg-max channel per image).
// Half and bfloat16 accumulate in float32 (at::opmath_type).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/ceil_div.h"
#include "relay/relay_checks.h"
#include "relay/relay_math.h"
#include "relay/relay_tensors.h"

namespace sarl {
namespace relay {
namespace {

using at::Tensor;

#if defined(__GNUC__) || defined(__clang__)
#define SARL_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SARL_ALWAYS_INLINE inline
#endif

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

// Pixels per forward task: its per-pixel accumulators (sum, max, arg-max: 12 bytes a pixel in
// float32) stay in L1/L2 while the task streams the block's run of every channel plane.
constexpr int64_t kPixelBlock = 2048;
// Independent running (sum, max, arg-max) lanes of the per-channel reduction: a single running
// max is a serial dependency chain, kLanes lanes (lane l sees the pixels i = l mod kLanes) vectorise.
constexpr int kLanes = 16;

// One channel plane's run src[0, len) of one pixel block, len >= 1, in a single pass:
//   * folds the run into the block's per-pixel running sum / max / arg-max over channels
//     (`channel` is this plane's index; a later channel wins a max only when strictly larger
//     or the first NaN, so ties keep the first channel);
//   * returns the run's own sum, max and first arg-max (block-relative) for the max over HW.
// The per-channel max merges the lanes with pair_replaces (larger value, NaN, else the smaller
// index) and then scans the tail after the lanes serially: the same result as one serial scan.
template <typename scalar_t, typename acc_t>
SARL_ALWAYS_INLINE void accumulate_plane_run(const scalar_t* __restrict__ src, int64_t len, int32_t channel,
                                 acc_t* __restrict__ pixel_sum, acc_t* __restrict__ pixel_max,
                                 int32_t* __restrict__ pixel_arg, acc_t& run_sum, acc_t& run_max,
                                 int64_t& run_arg) {
  alignas(64) acc_t lane_sum[kLanes];
  alignas(64) acc_t lane_max[kLanes];
  alignas(64) int32_t lane_idx[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    lane_sum[l] = acc_t(0);
    lane_max[l] = -std::numeric_limits<acc_t>::infinity();
    lane_idx[l] = l;
  }
  int64_t i0 = 0;
  for (; i0 + kLanes <= len; i0 += kLanes) {
    // Branch-free so that it vectorises.
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const int64_t i = i0 + l;
      const acc_t v = static_cast<acc_t>(src[i]);
      pixel_sum[i] += v;
      const bool pixel_take = max_replaces(v, pixel_max[i]);
      pixel_max[i] = pixel_take ? v : pixel_max[i];
      pixel_arg[i] = pixel_take ? channel : pixel_arg[i];
      lane_sum[l] += v;
      const bool lane_take = max_replaces(v, lane_max[l]);
      lane_max[l] = lane_take ? v : lane_max[l];
      lane_idx[l] = lane_take ? static_cast<int32_t>(i0) + l : lane_idx[l];  // int32: lane width of float
    }
  }
  // Start from element 0 (the smallest index): lanes that saw nothing (-inf, l) or only -inf
  // then never win, and an all -inf run keeps index 0.
  acc_t m = static_cast<acc_t>(src[0]);
  int64_t mi = 0;
  acc_t s = acc_t(0);
  for (int l = 0; l < kLanes; ++l) {
    s += lane_sum[l];
    if (pair_replaces(lane_max[l], static_cast<int64_t>(lane_idx[l]), m, mi)) {
      m = lane_max[l];
      mi = lane_idx[l];
    }
  }
  for (int64_t i = i0; i < len; ++i) {  // the tail comes after every lane's elements
    const acc_t v = static_cast<acc_t>(src[i]);
    pixel_sum[i] += v;
    if (max_replaces(v, pixel_max[i])) {
      pixel_max[i] = v;
      pixel_arg[i] = channel;
    }
    s += v;
    if (max_replaces(v, m)) {
      m = v;
      mi = i;
    }
  }
  run_sum = s;
  run_max = m;
  run_arg = mi;
}

// One forward task: pixel block [p0, p0 + len) of one image, g_block = &g[n, 0, p0] (planes HW
// apart). Leaves the block's per-pixel sum / max / arg-max over C in pixel_sum / pixel_max /
// pixel_arg [len] and, for each channel c, the block's sum / max / first arg-max (image pixel
// index) over its pixels in run_sum / run_max / run_arg [C].
template <typename scalar_t, typename acc_t>
SARL_ALWAYS_INLINE void pool_block(const scalar_t* g_block, int64_t C, int64_t HW, int64_t p0, int64_t len,
                                   acc_t* pixel_sum, acc_t* pixel_max, int32_t* pixel_arg, acc_t* run_sum,
                                   acc_t* run_max, int64_t* run_arg) {
  std::fill_n(pixel_sum, len, acc_t(0));
  std::fill_n(pixel_max, len, -std::numeric_limits<acc_t>::infinity());
  std::fill_n(pixel_arg, len, int32_t(0));
  for (int64_t c = 0; c < C; ++c) {
    int64_t arg;
    accumulate_plane_run(g_block + c * HW, len, static_cast<int32_t>(c), pixel_sum, pixel_max, pixel_arg,
                         run_sum[c], run_max[c], arg);
    run_arg[c] = p0 + arg;
  }
}

// The block pass is compute-heavy (three running reductions per element, two of them with an
// arg-max) and the extension is built for baseline x86-64 (SSE2, 4 floats a vector). For float32,
// the training dtype, GCC's target_clones also compiles an AVX2 copy (8 floats a vector, no FMA:
// the same rounding) and picks it at load time on CPUs that have AVX2.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SARL_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define SARL_AVX2_CLONE
#endif

SARL_AVX2_CLONE void pool_block_float(const float* g_block, int64_t C, int64_t HW, int64_t p0, int64_t len,
                                      float* pixel_sum, float* pixel_max, int32_t* pixel_arg, float* run_sum,
                                      float* run_max, int64_t* run_arg) {
  pool_block<float, float>(g_block, C, HW, p0, len, pixel_sum, pixel_max, pixel_arg, run_sum, run_max, run_arg);
}

template <typename scalar_t, typename acc_t>
void pool_block_dispatch(const scalar_t* g_block, int64_t C, int64_t HW, int64_t p0, int64_t len,
                         acc_t* pixel_sum, acc_t* pixel_max, int32_t* pixel_arg, acc_t* run_sum, acc_t* run_max,
                         int64_t* run_arg) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    pool_block_float(g_block, C, HW, p0, len, pixel_sum, pixel_max, pixel_arg, run_sum, run_max, run_arg);
  } else {
    pool_block<scalar_t, acc_t>(g_block, C, HW, p0, len, pixel_sum, pixel_max, pixel_arg, run_sum, run_max,
                                run_arg);
  }
}

template <typename scalar_t>
void pool_forward_kernel(const Tensor& g, Tensor& spatial, Tensor& channel, Tensor& spatial_argmax,
                         Tensor& channel_argmax) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = g.size(0), C = g.size(1), HW = g.size(2) * g.size(3);
  const int64_t threads = at::get_num_threads();
  // Blocks of at most kPixelBlock pixels, and enough tasks to keep every thread busy at small N.
  const int64_t blocks = std::max<int64_t>(
      {ceil_div(HW, kPixelBlock), std::min(ceil_div(2 * threads, N), ceil_div(HW, 256)), 1});
  const int64_t block_len = ceil_div(HW, blocks);
  // Per-(image, block, channel) partials of the reduction over HW, reduced over blocks afterwards.
  std::vector<acc_t> part_sum(N * blocks * C), part_max(N * blocks * C);
  std::vector<int64_t> part_idx(N * blocks * C);

  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  scalar_t* sp = spatial.mutable_data_ptr<scalar_t>();
  int64_t* sarg = spatial_argmax.mutable_data_ptr<int64_t>();
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);

  at::parallel_for(0, N * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> sum_buf(block_len), max_buf(block_len);
    std::vector<int32_t> arg_buf(block_len);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / blocks, k = t % blocks;
      const int64_t p0 = k * block_len, len = std::min(block_len, HW - p0);
      if (len <= 0) {  // a block past the end (rounding): neutral partials, skipped by the reduction
        for (int64_t c = 0; c < C; ++c) {
          const int64_t j = (n * blocks + k) * C + c;
          part_sum[j] = acc_t(0);
          part_max[j] = -std::numeric_limits<acc_t>::infinity();
          part_idx[j] = std::numeric_limits<int64_t>::max();
        }
        continue;
      }
      acc_t* sum = sum_buf.data();
      acc_t* mx = max_buf.data();
      int32_t* arg = arg_buf.data();
      const int64_t j = (n * blocks + k) * C;
      pool_block_dispatch<scalar_t, acc_t>(gp + n * C * HW + p0, C, HW, p0, len, sum, mx, arg, part_sum.data() + j,
                                           part_max.data() + j, part_idx.data() + j);
      scalar_t* mean_out = sp + n * 2 * HW + p0;
      scalar_t* max_out = mean_out + HW;
      int64_t* arg_out = sarg + n * HW + p0;
      for (int64_t i = 0; i < len; ++i) {
        mean_out[i] = static_cast<scalar_t>(sum[i] * inv_c);
        max_out[i] = static_cast<scalar_t>(mx[i]);
        arg_out[i] = arg[i];
      }
    }
  });

  // Reduce the block partials (blocks in ascending order: the first index wins ties).
  scalar_t* cp = channel.mutable_data_ptr<scalar_t>();
  int64_t* carg = channel_argmax.mutable_data_ptr<int64_t>();
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(HW);
  at::parallel_for(0, N * C, 256, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / C, c = t % C;
      acc_t s = acc_t(0), m = part_max[(n * blocks) * C + c];
      int64_t mi = part_idx[(n * blocks) * C + c];
      for (int64_t k = 0; k < blocks; ++k) {
        const int64_t j = (n * blocks + k) * C + c;
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

// The pixels of one image grouped by their arg-max channel (a counting sort of spatial_argmax):
// the pixels whose max over C is channel c are pixels[start[c], start[c + 1]). An index outside
// [0, C) (only a hand-made spatial_argmax has one) belongs to no channel: no max gradient.
struct PixelsByChannel {
  std::vector<int64_t> start;   // [C + 1]
  std::vector<int32_t> pixels;  // [<= HW], ascending within each channel

  void build(const int64_t* arg, int64_t C, int64_t HW) {
    start.assign(C + 1, 0);
    for (int64_t p = 0; p < HW; ++p) {
      if (arg[p] >= 0 && arg[p] < C) ++start[arg[p] + 1];
    }
    for (int64_t c = 0; c < C; ++c) start[c + 1] += start[c];
    pixels.resize(start[C]);
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t p = 0; p < HW; ++p) {
      if (arg[p] >= 0 && arg[p] < C) pixels[next[arg[p]]++] = static_cast<int32_t>(p);
    }
  }
};

// grad_g[n, c] is grad_mean_c / C + grad_avg_hw / HW everywhere, plus a max gradient at the few
// arg-max pixels. Each (n, c) plane is written in one streaming pass of that common part (reading
// only grad_mean_c, hot in cache), then its arg-max pixels (this channel's spatial arg-max pixels,
// found from the image's counting sort, and its own arg-max over HW) are rewritten with their
// whole gradient: one write of grad_g, no per-element index comparisons.
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
  // Contiguous runs of planes per thread: each thread sorts the pixels of only its few images.
  at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / HW), [&](int64_t t0, int64_t t1) {
    PixelsByChannel by_channel;
    int64_t sorted_image = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / C, c = t % C;
      if (n != sorted_image) {
        by_channel.build(sarg + n * HW, C, HW);
        sorted_image = n;
      }
      const scalar_t* g_mean = gs + n * 2 * HW;
      const scalar_t* g_max = g_mean + HW;
      const int64_t* arg = sarg + n * HW;
      const acc_t g_avg_hw = static_cast<acc_t>(gc[n * 2 * C + c]);
      const acc_t g_max_hw = static_cast<acc_t>(gc[n * 2 * C + C + c]);
      const int64_t arg_hw = carg[t];
      scalar_t* dst = out + t * HW;
      // The whole gradient of pixel p, the same formula (relay_math.h) for every element.
      auto element = [&](int64_t p, bool is_argmax_c, bool is_argmax_hw) {
        return static_cast<scalar_t>(pool_backward<acc_t>(static_cast<acc_t>(g_mean[p]),
                                                          static_cast<acc_t>(g_max[p]), is_argmax_c, g_avg_hw,
                                                          g_max_hw, is_argmax_hw, inv_c, inv_hw));
      };
#pragma omp simd
      for (int64_t p = 0; p < HW; ++p) dst[p] = element(p, false, false);
      for (int64_t j = by_channel.start[c]; j < by_channel.start[c + 1]; ++j) {
        const int64_t p = by_channel.pixels[j];
        dst[p] = element(p, true, p == arg_hw);
      }
      if (arg_hw >= 0 && arg_hw < HW) dst[arg_hw] = element(arg_hw, arg[arg_hw] == c, true);
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
