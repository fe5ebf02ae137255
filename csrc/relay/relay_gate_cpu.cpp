// CPU kernels of relay_gate and relay_gate_backward (schemas in csrc/sarl_ops.cpp, per-element
// math in relay_math.h, shared with relay_gate_cuda.cu).
//
// Parallelism (at::parallel_for; the extension is built with OpenMP):
//   relay_gate          over (n, c) planes, with sigmoid(spatial_logits) computed beforehand, once
//                       per pixel instead of once per channel.
//   relay_gate_backward over (n, block of output rows): each task streams all C planes of its
//                       rows once, writing grad_x, accumulating grad_s for its rows, a partial
//                       grad_c per channel, and the relay gradient of the relay rows it owns (blocks
//                       start where the source row changes, so no two tasks share a relay row).
// Half and bfloat16 accumulate in float32 (at::opmath_type).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
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

// Where each output pixel of an [H, W] plane reads the relay [h, w] (nearest upsampling), as one
// source index per output row and per output column. Empty when there is no relay.
struct NearestTables {
  int64_t h = 0, w = 0;
  std::vector<int64_t> row_src;  // [H]
  std::vector<int64_t> col_src;  // [W]
};

std::vector<int64_t> nearest_table(int64_t in_size, int64_t out_size) {
  std::vector<int64_t> table(static_cast<size_t>(out_size));
  for (int64_t i = 0; i < out_size; ++i) table[i] = nearest_source_index(i, in_size, out_size);
  return table;
}

NearestTables nearest_tables(const Tensor& relay, int64_t H, int64_t W) {
  NearestTables t;
  if (!relay.defined()) return t;
  t.h = relay.size(2);
  t.w = relay.size(3);
  t.row_src = nearest_table(t.h, H);
  t.col_src = nearest_table(t.w, W);
  return t;
}

// dst[i] = sigmoid(s[i]) for `count` consecutive logits, in the accumulation type.
template <typename scalar_t, typename acc_t>
void spatial_sigmoid(const scalar_t* s, acc_t* dst, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] = sigmoid<acc_t>(static_cast<acc_t>(s[i]));
}

template <typename scalar_t>
void gate_forward_kernel(const GateInputs& in, Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const Tensor& x = in.x;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const bool has_relay = in.has_relay();
  const NearestTables nt = nearest_tables(in.relay, H, W);
  const int64_t h = nt.h, w = nt.w;

  // sigmoid(s) once per pixel (not once per channel): exp is the costly part of the gate.
  std::vector<acc_t> sig_s(N * HW);
  const scalar_t* sp = in.spatial_logits.const_data_ptr<scalar_t>();
  at::parallel_for(0, N * HW, 4096, [&](int64_t i0, int64_t i1) {
    spatial_sigmoid<scalar_t, acc_t>(sp + i0, sig_s.data() + i0, i1 - i0);
  });

  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* cp = in.channel_logits.const_data_ptr<scalar_t>();
  const scalar_t* rp = has_relay ? in.relay.const_data_ptr<scalar_t>() : nullptr;
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
        const scalar_t* rr = rp + t * h * w + nt.row_src[y] * w;
        // The two common column maps (same size, and 2x between adjacent pyramid levels) are
        // written out so they vectorise; nearest_source_index maps them exactly this way.
        if (W == w) {
#pragma omp simd
          for (int64_t i = 0; i < W; ++i)
            orow[i] = static_cast<scalar_t>(
                gate_forward<acc_t>(static_cast<acc_t>(xr[i]), sig_c, sr[i], static_cast<acc_t>(rr[i])));
        } else if (W == 2 * w) {
#pragma omp simd
          for (int64_t i = 0; i < W; ++i)
            orow[i] = static_cast<scalar_t>(
                gate_forward<acc_t>(static_cast<acc_t>(xr[i]), sig_c, sr[i], static_cast<acc_t>(rr[i >> 1])));
        } else {
          for (int64_t i = 0; i < W; ++i)
            orow[i] = static_cast<scalar_t>(gate_forward<acc_t>(static_cast<acc_t>(xr[i]), sig_c, sr[i],
                                                                static_cast<acc_t>(rr[nt.col_src[i]])));
        }
      }
    }
  });
}

Tensor relay_gate_cpu(const Tensor& x_in, const Tensor& c_in, const Tensor& s_in,
                      const std::optional<Tensor>& relay_in) {
  check_gate_inputs(x_in, c_in, s_in, relay_in);
  Tensor out = at::empty(x_in.sizes(), contiguous_options(x_in));
  if (out.numel() == 0) return out;
  const GateInputs in = contiguous_gate_inputs(x_in, c_in, s_in, relay_in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "relay_gate_cpu",
                                  [&] { gate_forward_kernel<scalar_t>(in, out); });
  return out;
}

template <typename scalar_t>
void gate_backward_kernel(const Tensor& grad_out, const GateInputs& in, GateGrads& grads) {
  using acc_t = at::opmath_type<scalar_t>;
  const Tensor& x = in.x;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const bool has_relay = in.has_relay();
  const NearestTables nt = nearest_tables(in.relay, H, W);
  const int64_t h = nt.h, w = nt.w;
  const std::vector<int64_t>& row_src = nt.row_src;

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
  const scalar_t* cp = in.channel_logits.const_data_ptr<scalar_t>();
  const scalar_t* sp = in.spatial_logits.const_data_ptr<scalar_t>();
  scalar_t* gxp = grads.grad_x.mutable_data_ptr<scalar_t>();
  scalar_t* gsp = grads.grad_spatial_logits.mutable_data_ptr<scalar_t>();
  scalar_t* grp = has_relay ? grads.grad_relay.mutable_data_ptr<scalar_t>() : nullptr;

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
        // One pass over the block: grad_x, and the two reductions of the same product go * x
        // (over the block's pixels into acc_c, over C into gs).
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
        // all inside this block), written once per relay row. Relay columns that no output
        // column reads (w > W) keep the 0 of the cleared row buffer.
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
            for (int64_t i = 0; i < W; ++i) rr[nt.col_src[i]] += static_cast<acc_t>(gor[i]);
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
  scalar_t* gcp = grads.grad_channel_logits.mutable_data_ptr<scalar_t>();
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
      if (!read[q]) grads.grad_relay.select(2, q).zero_();
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> relay_gate_backward_cpu(const Tensor& grad_out_in, const Tensor& x_in,
                                                                   const Tensor& c_in, const Tensor& s_in,
                                                                   const std::optional<Tensor>& relay_in) {
  check_gate_backward_inputs(grad_out_in, x_in, c_in, s_in, relay_in);
  GateGrads grads = allocate_gate_grads(x_in, c_in, s_in, relay_in);
  if (!grads.needs_kernel) return grads.as_tuple();
  const Tensor grad_out = grad_out_in.contiguous();
  const GateInputs in = contiguous_gate_inputs(x_in, c_in, s_in, relay_in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "relay_gate_backward_cpu",
                                  [&] { gate_backward_kernel<scalar_t>(grad_out, in, grads); });
  return grads.as_tuple();
}

}  // namespace

TORCH_LIBRARY_IMPL(sarl, CPU, m) {
  m.impl("relay_gate", &relay_gate_cpu);
  m.impl("relay_gate_backward", &relay_gate_backward_cpu);
}

}  // namespace relay
}  // namespace sarl
