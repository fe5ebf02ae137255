// Per-element math of the two SARL relay ops, written once and shared by the CPU loops
// (relay_pool_cpu.cpp, relay_gate_cpu.cpp) and the CUDA kernels (relay_pool_cuda.cu,
// relay_gate_cuda.cu), so the CPU tests also cover the GPU math.
//
//   relay_pool(g)  : spatial = (mean_C g, max_C g), channel = (avg_HW g, max_HW g)
//   relay_gate(...) : out = x * (1 + sigmoid(c) * sigmoid(s)) + nearest_up(relay)
//
// Conventions (the pure-PyTorch references in projects/SARL/sarl/ops/relay_reference.py
// follow them, so values and gradients compare exactly):
//   * max ties: the FIRST index wins (smallest channel for max over C, smallest flattened
//     y * w + x for max over HW), as torch.max(dim) does on CPU; the whole max gradient goes
//     to that one element.
//   * NaN wins a max (it propagates, as in torch.max); among NaNs the first one wins.
//   * a reduction over an empty dimension (C == 0 or h * w == 0) gives 0 for mean and max and
//     argmax -1, so no NaN appears from 0 / 0.
//   * nearest upsampling uses ATen's legacy `nearest` index: src = min(floor(dst * (in / out)),
//     in - 1) with the scale and the product in float32, exactly as F.interpolate(mode="nearest")
//     with an explicit size.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace sarl {
namespace relay {

SARL_HD_INLINE float math_exp(float v) { return expf(v); }
SARL_HD_INLINE double math_exp(double v) { return exp(v); }

template <typename T>
SARL_HD_INLINE T sigmoid(T v) {
  // exp(-v) overflows to inf for v << 0 and the result is then an exact 0: no NaN.
  return T(1) / (T(1) + math_exp(-v));
}

// d sigmoid / d logit, written with the sigmoid value itself.
template <typename T>
SARL_HD_INLINE T sigmoid_grad(T sig) {
  return sig * (T(1) - sig);
}

// ---- nearest upsampling index (ATen's nearest_idx with output_size given, scales unset) ----
SARL_HD_INLINE int64_t nearest_source_index(int64_t dst, int64_t in_size, int64_t out_size) {
  if (out_size == in_size) return dst;
  if (out_size == 2 * in_size) return dst >> 1;
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  const int64_t src = static_cast<int64_t>(floorf(static_cast<float>(dst) * scale));
  return src < in_size - 1 ? src : in_size - 1;
}

// First destination index whose source index is >= src. The source index is non-decreasing
// in dst, so the destinations that read source `src` are [footprint_begin(src),
// footprint_begin(src + 1)): the footprint over which the relay gradient accumulates.
SARL_HD_INLINE int64_t footprint_begin(int64_t src, int64_t in_size, int64_t out_size) {
  int64_t lo = 0, hi = out_size;  // answer in [lo, hi]
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (nearest_source_index(mid, in_size, out_size) >= src) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// ---- max with first-index ties and NaN propagation ----------------------------------------
// True when candidate value `v` must replace the running max `m` (v comes at a later index):
// v > m, or v is NaN and m is not. Written as "not (v <= m), and m is a number" (the same truth
// table: v <= m is false exactly when v > m or either is NaN), two compares that vectorise.
template <typename T>
SARL_HD_INLINE bool max_replaces(T v, T m) {
  return !(v <= m) && m == m;
}

// Combine two (max, index) pairs whose index order is unknown (GPU tree reductions): the
// larger value wins, NaN beats numbers, equal values (or two NaNs) keep the smaller index.
template <typename T>
SARL_HD_INLINE bool pair_replaces(T v, int64_t vi, T m, int64_t mi) {
  const bool v_nan = v != v, m_nan = m != m;
  if (v_nan || m_nan) return v_nan && (!m_nan || vi < mi);
  return v > m || (v == m && vi < mi);
}

// ---- relay_gate ----------------------------------------------------------------------------
// Forward of one element: gate = 1 + sig_c * sig_s.
template <typename T>
SARL_HD_INLINE T gate_forward(T x, T sig_c, T sig_s, T relay_value) {
  return x * (T(1) + sig_c * sig_s) + relay_value;
}

// Backward of one element, given the upstream gradient `go`:
//   grad_x          = go * (1 + sig_c * sig_s)
//   channel_partial = go * x * sig_s   (summed over HW, then times sig_c * (1 - sig_c))
//   spatial_partial = go * x * sig_c   (summed over C,  then times sig_s * (1 - sig_s))
// The relay gradient is go itself, summed over the upsampling footprint.
template <typename T>
struct GateGrad {
  T grad_x;
  T channel_partial;
  T spatial_partial;
};

template <typename T>
SARL_HD_INLINE GateGrad<T> gate_backward(T go, T x, T sig_c, T sig_s) {
  const T gx = go * x;
  return GateGrad<T>{go * (T(1) + sig_c * sig_s), gx * sig_s, gx * sig_c};
}

// ---- relay_pool backward -------------------------------------------------------------------
// Gradient of g[n, c, p] from the four pooled outputs: mean over C spreads grad/C, avg over HW
// spreads grad/HW, each max sends its whole gradient to its arg-max element.
template <typename T>
SARL_HD_INLINE T pool_backward(T grad_mean_c, T grad_max_c, bool is_argmax_c, T grad_avg_hw,
                               T grad_max_hw, bool is_argmax_hw, T inv_c, T inv_hw) {
  T g = grad_mean_c * inv_c + grad_avg_hw * inv_hw;
  if (is_argmax_c) g += grad_max_c;
  if (is_argmax_hw) g += grad_max_hw;
  return g;
}

}  // namespace relay
}  // namespace sarl
