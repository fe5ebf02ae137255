// CPU kernels of the SARL relay ops (schemas in csrc/sarl_ops.cpp, math in relay_math.h).
//
// Layout: inputs are made contiguous NCHW first. For channels-last or strided inputs this is
// one extra copy of each such input (a read and a write of its size): about +2/3 of the
// traffic of relay_gate's forward for a channels-last x. Outputs are contiguous NCHW.
//
// Parallelism (at::parallel_for; the extension is built with OpenMP):
//   relay_pool         over (n, chunk of HW): each task streams all C planes of its chunk once,
//                      keeping the per-pixel mean/max over C in a small buffer, and leaves the
//                      chunk's per-channel partial sum/max, reduced over chunks afterwards.
//   relay_pool_backward over (n, c) planes: one write pass, no reduction.
//   relay_gate          over (n, c) planes, sigmoid(s) computed once per image beforehand.
//   relay_gate_backward over (n, block of output rows): each task streams all C planes of its
//                      rows once, writing grad_x, accumulating grad_s for its rows, a partial
//                      grad_c per channel, and the relay gradient of the relay rows it owns (blocks
//                      start where the source row changes, so no two tasks share a relay row).
// Half and bfloat16 accumulate in float32 (at::opmath_type).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "relay/relay_checks.h"
#include "relay/relay_math.h"

namespace sarl {
namespace relay {
namespace {

using at::Tensor;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Source index of every destination index along one axis (nearest upsampling).
std::vector<int64_t> nearest_table(int64_t in_size, int64_t out_size) {
  std::vector<int64_t> table(static_cast<size_t>(out_size));
  for (int64_t i = 0; i < out_size; ++i) table[i] = nearest_source_index(i, in_size, out_size);
  return table;
}

// ---------------------------------------------------------------------------------------------
// relay_pool
// ---------------------------------------------------------------------------------------------
// Max and first arg-max of src[0, len) (NaN wins, as torch.max). A single running (max, index)
// is a serial dependency chain; kLanes independent lanes (lane l sees i = l mod kLanes) vectorise,
// and merging them with pair_replaces (larger value, NaN, else the smaller index) gives the same
// result as the serial scan.
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
      if (len <= 0) {
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
  const int64_t N = g.size(0), C = g.size(1), h = g.size(2), w = g.size(3);
  auto opts = g.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor spatial = at::empty({N, 2, h, w}, opts);
  Tensor channel = at::empty({N, 2, C}, opts);
  Tensor spatial_argmax = at::empty({N, h, w}, opts.dtype(at::kLong));
  Tensor channel_argmax = at::empty({N, C}, opts.dtype(at::kLong));
  if (N == 0) return {spatial, channel, spatial_argmax, channel_argmax};
  if (C == 0 || h * w == 0) {  // reductions over an empty dimension: 0, argmax -1
    spatial.zero_();
    channel.zero_();
    spatial_argmax.fill_(-1);
    channel_argmax.fill_(-1);
    return {spatial, channel, spatial_argmax, channel_argmax};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "relay_pool_cpu", [&] {
    pool_forward_kernel<scalar_t>(g, spatial, channel, spatial_argmax, channel_argmax);
  });
  return {spatial, channel, spatial_argmax, channel_argmax};
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
  Tensor grad_g = at::empty({N, C, h, w}, grad_spatial_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad_g.numel() == 0) return grad_g;
  const Tensor grad_spatial = grad_spatial_in.contiguous(), grad_channel = grad_channel_in.contiguous();
  const Tensor spatial_argmax = spatial_argmax_in.contiguous(), channel_argmax = channel_argmax_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_g.scalar_type(), "relay_pool_backward_cpu", [&] {
    pool_backward_kernel<scalar_t>(grad_spatial, grad_channel, spatial_argmax, channel_argmax, grad_g);
  });
  return grad_g;
}

// ---------------------------------------------------------------------------------------------
// relay_gate
// ---------------------------------------------------------------------------------------------
// sigmoid(spatial_logits) for the rows [y0, y1) of image n, in the accumulation type.
template <typename scalar_t, typename acc_t>
void spatial_sigmoid(const scalar_t* s, acc_t* dst, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] = sigmoid<acc_t>(static_cast<acc_t>(s[i]));
}

template <typename scalar_t>
void gate_forward_kernel(const Tensor& x, const Tensor& c_logits, const Tensor& s_logits,
                         const std::optional<Tensor>& relay, Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const bool has_relay = relay.has_value();
  const int64_t h = has_relay ? relay->size(2) : 0, w = has_relay ? relay->size(3) : 0;
  const std::vector<int64_t> row_src = has_relay ? nearest_table(h, H) : std::vector<int64_t>();
  const std::vector<int64_t> col_src = has_relay ? nearest_table(w, W) : std::vector<int64_t>();

  // sigmoid(s) once per pixel (not once per channel): exp is the costly part of the gate.
  std::vector<acc_t> sig_s(N * HW);
  const scalar_t* sp = s_logits.const_data_ptr<scalar_t>();
  at::parallel_for(0, N * HW, 4096, [&](int64_t i0, int64_t i1) {
    spatial_sigmoid<scalar_t, acc_t>(sp + i0, sig_s.data() + i0, i1 - i0);
  });

  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* cp = c_logits.const_data_ptr<scalar_t>();
  const scalar_t* rp = has_relay ? relay->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / HW), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / C;
      const acc_t sig_c = sigmoid<acc_t>(static_cast<acc_t>(cp[t]));
      for (int64_t y = 0; y < H; ++y) {
        const scalar_t* xr = xp + t * HW + y * W;
        const acc_t* sr = sig_s.data() + n * HW + y * W;
        scalar_t* orow = op + t * HW + y * W;
        if (!has_relay) {
#pragma omp simd
          for (int64_t i = 0; i < W; ++i)
            orow[i] = static_cast<scalar_t>(gate_forward<acc_t>(static_cast<acc_t>(xr[i]), sig_c, sr[i], acc_t(0)));
          continue;
        }
        const scalar_t* rr = rp + t * h * w + row_src[y] * w;
        if (W == w) {
#pragma omp simd
          for (int64_t i = 0; i < W; ++i)
            orow[i] = static_cast<scalar_t>(
                gate_forward<acc_t>(static_cast<acc_t>(xr[i]), sig_c, sr[i], static_cast<acc_t>(rr[i])));
        } else if (W == 2 * w) {  // the common case (adjacent pyramid levels)
#pragma omp simd
          for (int64_t i = 0; i < W; ++i)
            orow[i] = static_cast<scalar_t>(
                gate_forward<acc_t>(static_cast<acc_t>(xr[i]), sig_c, sr[i], static_cast<acc_t>(rr[i >> 1])));
        } else {
          for (int64_t i = 0; i < W; ++i)
            orow[i] = static_cast<scalar_t>(gate_forward<acc_t>(static_cast<acc_t>(xr[i]), sig_c, sr[i],
                                                                static_cast<acc_t>(rr[col_src[i]])));
        }
      }
    }
  });
}

Tensor relay_gate_cpu(const Tensor& x_in, const Tensor& c_in, const Tensor& s_in,
                      const std::optional<Tensor>& relay_in) {
  check_gate_inputs(x_in, c_in, s_in, relay_in);
  Tensor out = at::empty(x_in.sizes(), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const Tensor x = x_in.contiguous(), c = c_in.contiguous(), s = s_in.contiguous();
  std::optional<Tensor> relay;
  if (relay_in.has_value() && relay_in->defined()) relay = relay_in->contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relay_gate_cpu",
                                  [&] { gate_forward_kernel<scalar_t>(x, c, s, relay, out); });
  return out;
}

template <typename scalar_t>
void gate_backward_kernel(const Tensor& grad_out, const Tensor& x, const Tensor& c_logits, const Tensor& s_logits,
                          const std::optional<Tensor>& relay, Tensor& grad_x, Tensor& grad_c, Tensor& grad_s,
                          Tensor& grad_relay) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const bool has_relay = relay.has_value();
  const int64_t h = has_relay ? relay->size(2) : 0, w = has_relay ? relay->size(3) : 0;
  const std::vector<int64_t> row_src = has_relay ? nearest_table(h, H) : std::vector<int64_t>();
  const std::vector<int64_t> col_src = has_relay ? nearest_table(w, W) : std::vector<int64_t>();

  // Row blocks: enough tasks for the threads, and grad_s buffers that stay in cache.
  const int64_t threads = at::get_num_threads();
  int64_t blocks = std::max<int64_t>({ceil_div(2 * threads, N), ceil_div(HW, 16384), 1});
  blocks = std::min(blocks, H);
  const int64_t rows_per_block = ceil_div(H, blocks);
  std::vector<int64_t> block_start(blocks + 1, H);
  block_start[0] = 0;
  for (int64_t b = 1; b < blocks; ++b) {
    int64_t start = std::max(block_start[b - 1], std::min(H, b * rows_per_block));
    // A relay row's footprint must not straddle two tasks: start where the source row changes.
    while (has_relay && start > 0 && start < H && row_src[start] == row_src[start - 1]) ++start;
    block_start[b] = start;
  }
  block_start[blocks] = H;

  std::vector<acc_t> part_c(N * blocks * C);
  const scalar_t* gop = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* cp = c_logits.const_data_ptr<scalar_t>();
  const scalar_t* sp = s_logits.const_data_ptr<scalar_t>();
  scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
  scalar_t* gsp = grad_s.mutable_data_ptr<scalar_t>();
  scalar_t* grp = has_relay ? grad_relay.mutable_data_ptr<scalar_t>() : nullptr;

  at::parallel_for(0, N * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> sig_s_buf, gs_buf, relay_row(static_cast<size_t>(w));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / blocks, b = t % blocks;
      const int64_t y0 = block_start[b], y1 = block_start[b + 1];
      const int64_t count = (y1 - y0) * W;
      acc_t* pc = part_c.data() + (n * blocks + b) * C;
      if (count == 0) {
        std::fill(pc, pc + C, acc_t(0));
        continue;
      }
      sig_s_buf.resize(count);
      gs_buf.assign(count, acc_t(0));
      spatial_sigmoid<scalar_t, acc_t>(sp + n * HW + y0 * W, sig_s_buf.data(), count);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t plane = (n * C + c) * HW + y0 * W;
        const scalar_t* go = gop + plane;
        const scalar_t* xv = xp + plane;
        scalar_t* gx = gxp + plane;
        const acc_t sig_c = sigmoid<acc_t>(static_cast<acc_t>(cp[n * C + c]));
        const acc_t* ss = sig_s_buf.data();
        acc_t* gs = gs_buf.data();
        acc_t acc_c = acc_t(0);
        // One pass over the block: grad_x, and the two reductions (over HW into acc_c, over
        // C into gs) of the same product go * x.
#pragma omp simd reduction(+ : acc_c)
        for (int64_t i = 0; i < count; ++i) {
          const GateGrad<acc_t> r =
              gate_backward<acc_t>(static_cast<acc_t>(go[i]), static_cast<acc_t>(xv[i]), sig_c, ss[i]);
          gx[i] = static_cast<scalar_t>(r.grad_x);
          acc_c += r.channel_partial;
          gs[i] += r.spatial_partial;
        }
        pc[c] = acc_c;
        if (!has_relay) continue;
        // Relay gradient: sum go over each relay row's footprint (its rows are consecutive and
        // all inside this block), written once per relay row.
        scalar_t* gr_plane = grp + (n * C + c) * h * w;
        for (int64_t y = y0; y < y1; ++y) {
          const int64_t q = row_src[y];
          if (y == y0 || q != row_src[y - 1]) std::fill(relay_row.begin(), relay_row.end(), acc_t(0));
          const scalar_t* gor = go + (y - y0) * W;
          acc_t* rr = relay_row.data();
          if (W == w) {
#pragma omp simd
            for (int64_t i = 0; i < W; ++i) rr[i] += static_cast<acc_t>(gor[i]);
          } else if (W == 2 * w) {
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) rr[j] += static_cast<acc_t>(gor[2 * j]) + static_cast<acc_t>(gor[2 * j + 1]);
          } else {
            for (int64_t i = 0; i < W; ++i) rr[col_src[i]] += static_cast<acc_t>(gor[i]);
          }
          if (y + 1 == y1 || row_src[y + 1] != q) {
            scalar_t* dst = gr_plane + q * w;
            for (int64_t j = 0; j < w; ++j) dst[j] = static_cast<scalar_t>(rr[j]);
          }
        }
      }
      scalar_t* gs_out = gsp + n * HW + y0 * W;
      for (int64_t i = 0; i < count; ++i)
        gs_out[i] = static_cast<scalar_t>(gs_buf[i] * sigmoid_grad<acc_t>(sig_s_buf[i]));
    }
  });

  // grad_c = (sum over blocks of the partials) * sig_c * (1 - sig_c)
  scalar_t* gcp = grad_c.mutable_data_ptr<scalar_t>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      acc_t s = acc_t(0);
      for (int64_t b = 0; b < blocks; ++b) s += part_c[(n * blocks + b) * C + c];
      const acc_t sig_c = sigmoid<acc_t>(static_cast<acc_t>(cp[n * C + c]));
      gcp[n * C + c] = static_cast<scalar_t>(s * sigmoid_grad<acc_t>(sig_c));
    }
  }
  // Relay rows no output row reads (only when h > H: downsampling) get a zero gradient.
  if (has_relay && h > H) {
    std::vector<char> read(static_cast<size_t>(h), 0);
    for (int64_t y = 0; y < H; ++y) read[row_src[y]] = 1;
    for (int64_t q = 0; q < h; ++q)
      if (!read[q]) grad_relay.select(2, q).zero_();
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> relay_gate_backward_cpu(const Tensor& grad_out_in, const Tensor& x_in,
                                                                   const Tensor& c_in, const Tensor& s_in,
                                                                   const std::optional<Tensor>& relay_in) {
  check_gate_backward_inputs(grad_out_in, x_in, c_in, s_in, relay_in);
  const bool has_relay = relay_in.has_value() && relay_in->defined();
  auto opts = x_in.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor grad_x = at::empty(x_in.sizes(), opts);
  Tensor grad_c = at::empty(c_in.sizes(), opts);
  Tensor grad_s = at::empty(s_in.sizes(), opts);
  Tensor grad_relay = has_relay ? at::empty(relay_in->sizes(), opts) : at::empty({0}, opts);
  if (x_in.numel() == 0) {  // sums over empty dimensions are 0
    grad_c.zero_();
    grad_s.zero_();
    grad_relay.zero_();
    return {grad_x, grad_c, grad_s, grad_relay};
  }
  const Tensor grad_out = grad_out_in.contiguous(), x = x_in.contiguous(), c = c_in.contiguous(),
               s = s_in.contiguous();
  std::optional<Tensor> relay;
  if (has_relay) relay = relay_in->contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relay_gate_backward_cpu", [&] {
    gate_backward_kernel<scalar_t>(grad_out, x, c, s, relay, grad_x, grad_c, grad_s, grad_relay);
  });
  return {grad_x, grad_c, grad_s, grad_relay};
}

}  // namespace

TORCH_LIBRARY_IMPL(sarl, CPU, m) {
  m.impl("relay_pool", &relay_pool_cpu);
  m.impl("relay_pool_backward", &relay_pool_backward_cpu);
  m.impl("relay_gate", &relay_gate_cpu);
  m.impl("relay_gate_backward", &relay_gate_backward_cpu);
}

}  // namespace relay
}  // namespace sarl
