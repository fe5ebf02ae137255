// CPU kernels of the scale-adaptive IoU loss: sarl::sal_loss and sarl::sal_weights.
//
// sal_loss makes at most three passes over the boxes: a min/max reduction of the target areas
// (normalize="batch"/"image"), with weight_norm="mean" a sum of the weights per group, then one
// pass that computes each box's weight, loss and, when asked, d loss / d pred (so the backward
// only scales it). Sums are taken per fixed chunk of
// boxes and then added in chunk order, so results do not depend on the number of threads.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

// The per-box math below must vectorise: GCC only turns its selects (clamp, min/max and their
// derivative selectors) into branch-free vector code when comparisons may not trap. Placed
// after the ATen headers, so it only applies to the SAL code (which never relies on FP traps).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "common/ceil_div.h"
#include "sal/sal_checks.h"
#include "sal/sal_math.h"
#include "sal/sal_tensors.h"

namespace sarl {
namespace sal {
namespace {

constexpr int64_t kChunk = 4096;  // boxes per chunk: big enough to amortise, small enough to balance
constexpr int kBlock = 64;        // boxes per struct-of-arrays block (fits in L1 with room to spare)
static_assert(kChunk % kBlock == 0, "chunks are whole blocks");

inline int64_t num_chunks(int64_t n) { return ceil_div(n, kChunk); }

// On x86-64 the hot passes also exist compiled for AVX2 (8 floats per vector where the baseline
// build has SSE2's 4), chosen at run time: a wrapper with target("avx2") and `flatten`, which
// inlines the generic pass (and the shared math of sal_math.h) into it. No FMA, so no contraction:
// both versions round every operation alike and give the same bits (as the GPU's math does).
// SARL_SAL_DISABLE_AVX2=1 forces the baseline version (tests compare the two).
#if defined(__GNUC__) && defined(__x86_64__)
#define SARL_SAL_X86_DISPATCH 1
#define SARL_SAL_AVX2 __attribute__((target("avx2"), flatten))
inline bool use_avx2() {
  static const bool enabled = [] {
    const char* off = std::getenv("SARL_SAL_DISABLE_AVX2");
    return __builtin_cpu_supports("avx2") && !(off != nullptr && std::strcmp(off, "1") == 0);
  }();
  return enabled;
}
#endif

// Per-group [lo, hi] of target areas (G = 1 for "batch" and "fixed", number of images for "image"),
// and with weight_norm="mean" each group's divisor (empty otherwise: the weights are not divided).
template <typename T>
struct Ranges {
  std::vector<T> lo, hi;
  std::vector<T> divisor;
};

// Min and max of the target areas of boxes [begin, end): per-lane accumulators over blocks of
// kLanes boxes, so the loop vectorises (a single running min/max is a serial dependency chain).
// A NaN area never replaces an accumulator (non-finite targets are rejected by the loss pass).
template <BoxFormat kFmt, typename T>
void area_minmax(const T* tgt, int64_t begin, int64_t end, T& lo_out, T& hi_out) {
  constexpr int kLanes = 16;
  alignas(64) T lo[kLanes], hi[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    lo[j] = std::numeric_limits<T>::infinity();
    hi[j] = -std::numeric_limits<T>::infinity();
  }
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    const T* q = tgt + 4 * i;
    for (int j = 0; j < kLanes; ++j) {
      const Box<T> c = corners<kFmt>(Box<T>{q[4 * j], q[4 * j + 1], q[4 * j + 2], q[4 * j + 3]});
      const T a = clamp_min0(c.x2 - c.x1) * clamp_min0(c.y2 - c.y1);
      lo[j] = area_range_min(lo[j], a);
      hi[j] = area_range_max(hi[j], a);
    }
  }
  for (; i < end; ++i) {
    const T a = box_area<kFmt>(tgt + 4 * i);
    lo[0] = area_range_min(lo[0], a);
    hi[0] = area_range_max(hi[0], a);
  }
  T l = lo[0], h = hi[0];
  for (int j = 1; j < kLanes; ++j) {
    l = lo[j] < l ? lo[j] : l;
    h = hi[j] > h ? hi[j] : h;
  }
  lo_out = l;
  hi_out = h;
}

#ifdef SARL_SAL_X86_DISPATCH
template <BoxFormat kFmt, typename T>
SARL_SAL_AVX2 void area_minmax_avx2(const T* tgt, int64_t begin, int64_t end, T& lo_out, T& hi_out) {
  area_minmax<kFmt>(tgt, begin, end, lo_out, hi_out);
}
#endif

// area_minmax in the fastest version this CPU runs.
template <BoxFormat kFmt, typename T>
void area_minmax_dispatch(const T* tgt, int64_t begin, int64_t end, T& lo_out, T& hi_out) {
#ifdef SARL_SAL_X86_DISPATCH
  if (use_avx2()) return area_minmax_avx2<kFmt>(tgt, begin, end, lo_out, hi_out);
#endif
  area_minmax<kFmt>(tgt, begin, end, lo_out, hi_out);
}

template <typename T>
Ranges<T> area_ranges(const T* tgt, int64_t n, BoxFormat fmt, Normalize norm, const int64_t* bidx,
                      double area_lo, double area_hi) {
  Ranges<T> r;
  if (norm == Normalize::kNone) return r;
  if (norm == Normalize::kFixed) {
    r.lo.assign(1, static_cast<T>(area_lo));
    r.hi.assign(1, static_cast<T>(area_hi));
    return r;
  }
  if (norm == Normalize::kBatch) {
    const int64_t nc = num_chunks(n);
    std::vector<T> lo(nc, std::numeric_limits<T>::infinity()), hi(nc, -std::numeric_limits<T>::infinity());
    at::parallel_for(0, nc, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const int64_t end = std::min(n, (c + 1) * kChunk);
        if (fmt == BoxFormat::kXYXY) {
          area_minmax_dispatch<BoxFormat::kXYXY>(tgt, c * kChunk, end, lo[c], hi[c]);
        } else {
          area_minmax_dispatch<BoxFormat::kCXCYWH>(tgt, c * kChunk, end, lo[c], hi[c]);
        }
      }
    });
    r.lo.assign(1, n ? *std::min_element(lo.begin(), lo.end()) : T(0));
    r.hi.assign(1, n ? *std::max_element(hi.begin(), hi.end()) : T(0));
    return r;
  }
  // "image": segment min/max by batch_index (one serial pass; groups are few).
  int64_t groups = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(bidx[i] >= 0, "batch_index must be >= 0, got ", bidx[i], " at row ", i);
    groups = std::max(groups, bidx[i] + 1);
  }
  r.lo.assign(groups, std::numeric_limits<T>::infinity());
  r.hi.assign(groups, -std::numeric_limits<T>::infinity());
  for (int64_t i = 0; i < n; ++i) {
    const T a = box_area(tgt + 4 * i, fmt);
    const int64_t g = bidx[i];
    r.lo[g] = area_range_min(r.lo[g], a);
    r.hi[g] = area_range_max(r.hi[g], a);
  }
  return r;
}

// weight_norm="mean": fills r.divisor with each group's mean weight (see mean_weight_divisor). Rows
// with a non-finite target (the call fails on them anyway) and NaN weights (an area that overflows)
// count in no mean. "batch"/"fixed": sums per chunk in parallel, added in chunk order (the result
// does not depend on the number of threads); "image": one serial pass (groups are few).
template <typename T>
void mean_weight_divisors(const T* tgt, int64_t n, BoxFormat fmt, Normalize norm, const int64_t* bidx, T beta,
                          Ranges<T>& r) {
  if (norm == Normalize::kNone) return;  // every weight is 1: the mean divides nothing
  const size_t groups = r.lo.size();
  std::vector<double> sum(groups, 0.0), count(groups, 0.0);
  // Adds box i's weight (group g) to (s, c) when it counts.
  auto add_weight = [&](int64_t i, int64_t g, double& s, double& c) {
    const T* box = tgt + 4 * i;
    if (!box_finite(box)) return;
    const T w = scale_weight(box_area(box, fmt), r.lo[g], r.hi[g], beta);
    if (w != w) return;
    s += static_cast<double>(w);
    c += 1.0;
  };
  if (norm == Normalize::kImage) {
    for (int64_t i = 0; i < n; ++i) add_weight(i, bidx[i], sum[bidx[i]], count[bidx[i]]);
  } else if (n > 0) {
    const int64_t nc = num_chunks(n);
    std::vector<double> chunk_sum(nc, 0.0), chunk_count(nc, 0.0);
    at::parallel_for(0, nc, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const int64_t end = std::min(n, (c + 1) * kChunk);
        for (int64_t i = c * kChunk; i < end; ++i) add_weight(i, 0, chunk_sum[c], chunk_count[c]);
      }
    });
    for (int64_t c = 0; c < nc; ++c) {
      sum[0] += chunk_sum[c];
      count[0] += chunk_count[c];
    }
  }
  r.divisor.resize(groups);
  for (size_t g = 0; g < groups; ++g) r.divisor[g] = static_cast<T>(mean_weight_divisor(sum[g], count[g]));
}

template <typename T>
inline T box_weight(const T* tgt_box, int64_t i, BoxFormat fmt, Normalize norm, const int64_t* bidx,
                    const Ranges<T>& r, T beta) {
  if (norm == Normalize::kNone) return T(1);
  const int64_t g = norm == Normalize::kImage ? bidx[i] : 0;
  const T w = scale_weight(box_area(tgt_box, fmt), r.lo[g], r.hi[g], beta);
  return r.divisor.empty() ? w : w / r.divisor[g];
}

void raise_first_non_finite(const std::vector<int64_t>& bad) {
  for (int64_t b : bad) {
    TORCH_CHECK_VALUE(b < 0, "target must be finite: row ", b, " has a NaN or infinite coordinate");
  }
}

// What one chunk of the loss pass needs (pointers to contiguous data).
template <typename T>
struct LossArgs {
  const T* pred;
  const T* target;
  const T* weight;     // [N] or nullptr
  const int64_t* bidx;  // [N] or nullptr
  Normalize norm;
  const Ranges<T>* ranges;
  T beta, eps, grad_scale;
  T* grad;      // [N, 4] or nullptr
  T* loss_out;  // [N] for reduction="none", else nullptr
};

// Weights W[j] of the boxes b0 .. b0+m whose target numbers are in Q (struct of arrays), divided by
// their group's mean weight (weight_norm="mean"), times the user's per-box weight; F[j] is 0, or NaN when the box has a non-finite coordinate.
template <BoxFormat kFmt, typename T>
inline void block_weights(const T (&Q)[4][kBlock], int m, int64_t b0, Normalize norm, const Ranges<T>& r,
                          const int64_t* bidx, const T* weight, T beta, T (&W)[kBlock], T (&F)[kBlock]) {
  for (int j = 0; j < m; ++j) F[j] = Q[0][j] * T(0) + Q[1][j] * T(0) + Q[2][j] * T(0) + Q[3][j] * T(0);
  switch (norm) {
    case Normalize::kNone:
      for (int j = 0; j < m; ++j) W[j] = T(1);
      break;
    case Normalize::kImage:
      for (int j = 0; j < m; ++j) {
        const Box<T> c = corners<kFmt>(Box<T>{Q[0][j], Q[1][j], Q[2][j], Q[3][j]});
        const int64_t g = bidx[b0 + j];
        W[j] = scale_weight(clamp_min0(c.x2 - c.x1) * clamp_min0(c.y2 - c.y1), r.lo[g], r.hi[g], beta);
      }
      break;
    default: {  // "batch" and "fixed": one range
      const T lo = r.lo[0], hi = r.hi[0];
      for (int j = 0; j < m; ++j) {
        const Box<T> c = corners<kFmt>(Box<T>{Q[0][j], Q[1][j], Q[2][j], Q[3][j]});
        W[j] = scale_weight(clamp_min0(c.x2 - c.x1) * clamp_min0(c.y2 - c.y1), lo, hi, beta);
      }
    }
  }
  if (!r.divisor.empty()) {  // weight_norm="mean" (never with normalize="none")
    if (norm == Normalize::kImage) {
      for (int j = 0; j < m; ++j) W[j] /= r.divisor[bidx[b0 + j]];
    } else {
      const T d = r.divisor[0];
      for (int j = 0; j < m; ++j) W[j] /= d;
    }
  }
  if (weight != nullptr) {
    for (int j = 0; j < m; ++j) W[j] *= weight[b0 + j];
  }
}

// The loss pass over boxes [begin, end): returns the chunk's loss sum (reduction != "none") and
// sets *first_bad to the first row with a non-finite target (or leaves it).
template <LossType kType, BoxFormat kFmt, bool kGrad, typename T>
double loss_chunk(const LossArgs<T>& a, int64_t begin, int64_t end, int64_t* first_bad) {
  alignas(64) T P[4][kBlock], Q[4][kBlock], G[4][kBlock], W[kBlock], F[kBlock], L[kBlock];
  double acc = 0;
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, end - b0));
    const T* pp = a.pred + 4 * b0;
    const T* tp = a.target + 4 * b0;
    for (int j = 0; j < m; ++j) {
      for (int k = 0; k < 4; ++k) {
        P[k][j] = pp[4 * j + k];
        Q[k][j] = tp[4 * j + k];
      }
    }
    block_weights<kFmt>(Q, m, b0, a.norm, *a.ranges, a.bidx, a.weight, a.beta, W, F);
    for (int j = 0; j < m; ++j) {
      if (F[j] != F[j] && *first_bad < 0) *first_bad = b0 + j;
    }
    // The hot loop: straight-line math on unit-stride arrays, vectorised by the compiler.
    for (int j = 0; j < m; ++j) {
      const Box<T> pb{P[0][j], P[1][j], P[2][j], P[3][j]};
      const Box<T> tb{Q[0][j], Q[1][j], Q[2][j], Q[3][j]};
      Box<T> gb{T(0), T(0), T(0), T(0)};
      L[j] = W[j] * box_loss_values<kType, kFmt, kGrad>(pb, tb, a.eps, W[j] * a.grad_scale, gb);
      G[0][j] = gb.x1;
      G[1][j] = gb.y1;
      G[2][j] = gb.x2;
      G[3][j] = gb.y2;
    }
    if constexpr (kGrad) {
      T* gp = a.grad + 4 * b0;
      for (int j = 0; j < m; ++j) {
        for (int k = 0; k < 4; ++k) gp[4 * j + k] = G[k][j];
      }
    }
    if (a.loss_out != nullptr) {
      for (int j = 0; j < m; ++j) a.loss_out[b0 + j] = L[j];
    } else {
      for (int j = 0; j < m; ++j) acc += static_cast<double>(L[j]);
    }
  }
  return acc;
}

#ifdef SARL_SAL_X86_DISPATCH
template <LossType kType, BoxFormat kFmt, bool kGrad, typename T>
SARL_SAL_AVX2 double loss_chunk_avx2(const LossArgs<T>& a, int64_t begin, int64_t end, int64_t* first_bad) {
  return loss_chunk<kType, kFmt, kGrad>(a, begin, end, first_bad);
}
#endif

// loss_chunk in the fastest version this CPU runs.
template <LossType kType, BoxFormat kFmt, bool kGrad, typename T>
double loss_chunk_dispatch(const LossArgs<T>& a, int64_t begin, int64_t end, int64_t* first_bad) {
#ifdef SARL_SAL_X86_DISPATCH
  if (use_avx2()) return loss_chunk_avx2<kType, kFmt, kGrad>(a, begin, end, first_bad);
#endif
  return loss_chunk<kType, kFmt, kGrad>(a, begin, end, first_bad);
}

// Calls f(loss_type, box_format, grad) with compile-time constants (one specialised loop each).
template <typename F>
void dispatch_loss(LossType type, BoxFormat fmt, bool grad, F&& f) {
  auto with_grad = [&](auto type_c, auto fmt_c) {
    if (grad) {
      f(type_c, fmt_c, std::true_type{});
    } else {
      f(type_c, fmt_c, std::false_type{});
    }
  };
  auto with_fmt = [&](auto type_c) {
    if (fmt == BoxFormat::kXYXY) {
      with_grad(type_c, std::integral_constant<BoxFormat, BoxFormat::kXYXY>{});
    } else {
      with_grad(type_c, std::integral_constant<BoxFormat, BoxFormat::kCXCYWH>{});
    }
  };
  switch (type) {
    case LossType::kIoU2: with_fmt(std::integral_constant<LossType, LossType::kIoU2>{}); break;
    case LossType::kIoU: with_fmt(std::integral_constant<LossType, LossType::kIoU>{}); break;
    case LossType::kGIoU: with_fmt(std::integral_constant<LossType, LossType::kGIoU>{}); break;
    case LossType::kDIoU: with_fmt(std::integral_constant<LossType, LossType::kDIoU>{}); break;
    case LossType::kCIoU: with_fmt(std::integral_constant<LossType, LossType::kCIoU>{}); break;
  }
}

at::Tensor sal_weights_cpu(const at::Tensor& target_in, const c10::optional<at::Tensor>& batch_index,
                           c10::string_view box_format, c10::string_view normalize, c10::string_view weight_norm,
                           double beta, double area_lo, double area_hi) {
  const WeightOptions options =
      check_weights_call(target_in, batch_index, box_format, normalize, weight_norm, area_lo, area_hi);
  const BoxFormat fmt = options.box_format;
  const Normalize norm = options.normalize;
  const WeightTensors tensors = weight_tensors(target_in, batch_index, options);
  const int64_t n = tensors.target.size(0);
  AT_DISPATCH_FLOATING_TYPES(tensors.target.scalar_type(), "sal_weights_cpu", [&] {
    const scalar_t* tgt = tensors.target.data_ptr<scalar_t>();
    const int64_t* bidx = tensors.batch_index.defined() ? tensors.batch_index.data_ptr<int64_t>() : nullptr;
    scalar_t* w = tensors.weights.data_ptr<scalar_t>();
    std::vector<int64_t> bad(num_chunks(n), -1);
    at::parallel_for(0, num_chunks(n), 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const int64_t end = std::min(n, (c + 1) * kChunk);
        for (int64_t i = c * kChunk; i < end; ++i) {
          if (!box_finite(tgt + 4 * i) && bad[c] < 0) bad[c] = i;
        }
      }
    });
    raise_first_non_finite(bad);
    Ranges<scalar_t> r = area_ranges(tgt, n, fmt, norm, bidx, area_lo, area_hi);
    const scalar_t b = static_cast<scalar_t>(beta);
    if (options.weight_norm == WeightNorm::kMean) mean_weight_divisors(tgt, n, fmt, norm, bidx, b, r);
    at::parallel_for(0, n, kChunk, [&](int64_t ib, int64_t ie) {
      for (int64_t i = ib; i < ie; ++i) w[i] = box_weight(tgt + 4 * i, i, fmt, norm, bidx, r, b);
    });
  });
  return tensors.weights;
}

std::tuple<at::Tensor, at::Tensor> sal_loss_cpu(
    const at::Tensor& pred_in, const at::Tensor& target_in, const c10::optional<at::Tensor>& batch_index,
    const c10::optional<at::Tensor>& weight, c10::string_view box_format, c10::string_view loss_type,
    c10::string_view normalize, c10::string_view weight_norm, double beta, double area_lo, double area_hi,
    c10::string_view reduction, double eps, bool compute_grad) {
  const LossOptions options = check_loss_call(pred_in, target_in, batch_index, weight, box_format, loss_type,
                                              normalize, weight_norm, area_lo, area_hi, reduction);
  const BoxFormat fmt = options.box_format;
  const LossType type = options.loss_type;
  const Normalize norm = options.normalize;
  const Reduction red = options.reduction;
  const int64_t n = pred_in.size(0);
  const LossTensors tensors = loss_tensors(pred_in, target_in, batch_index, weight, options, compute_grad);
  const at::Tensor& loss = tensors.loss;

  AT_DISPATCH_FLOATING_TYPES(tensors.pred.scalar_type(), "sal_loss_cpu", [&] {
    using acc_t = double;
    const scalar_t* p = tensors.pred.data_ptr<scalar_t>();
    const scalar_t* t = tensors.target.data_ptr<scalar_t>();
    const scalar_t* wt = tensors.weight.defined() ? tensors.weight.data_ptr<scalar_t>() : nullptr;
    const int64_t* bidx = tensors.batch_index.defined() ? tensors.batch_index.data_ptr<int64_t>() : nullptr;
    scalar_t* g = compute_grad ? tensors.grad.data_ptr<scalar_t>() : nullptr;
    scalar_t* out = red == Reduction::kNone ? loss.data_ptr<scalar_t>() : nullptr;
    Ranges<scalar_t> r = area_ranges(t, n, fmt, norm, bidx, area_lo, area_hi);
    const scalar_t b = static_cast<scalar_t>(beta);
    if (options.weight_norm == WeightNorm::kMean) mean_weight_divisors(t, n, fmt, norm, bidx, b, r);
    const scalar_t e = static_cast<scalar_t>(eps);
    const scalar_t grad_scale = options.loss_scale<scalar_t>(n);

    const LossArgs<scalar_t> args{p, t, wt, bidx, norm, &r, b, e, grad_scale, g, out};
    const int64_t nc = num_chunks(n);
    std::vector<acc_t> partial(nc, acc_t(0));
    std::vector<int64_t> bad(nc, -1);
    dispatch_loss(type, fmt, compute_grad, [&](auto type_c, auto fmt_c, auto grad_c) {
      at::parallel_for(0, nc, 1, [&](int64_t cb, int64_t ce) {
        for (int64_t c = cb; c < ce; ++c) {
          partial[c] = loss_chunk_dispatch<decltype(type_c)::value, decltype(fmt_c)::value, decltype(grad_c)::value>(
              args, c * kChunk, std::min(n, (c + 1) * kChunk), &bad[c]);
        }
      });
    });
    raise_first_non_finite(bad);
    if (out == nullptr) {
      acc_t total = 0;
      for (acc_t v : partial) total += v;
      if (red == Reduction::kMean && n > 0) total /= static_cast<acc_t>(n);
      loss.fill_(static_cast<scalar_t>(total));
    }
  });
  return {tensors.loss, tensors.grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(sarl, CPU, m) {
  m.impl("sal_loss", &sal_loss_cpu);
  m.impl("sal_weights", &sal_weights_cpu);
}

}  // namespace sal
}  // namespace sarl
