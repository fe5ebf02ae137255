// Per-box math of the scale-adaptive IoU loss (SAL), written once and shared by the CPU loop
// (sal_cpu.cpp) and the CUDA kernels (sal_cuda.cu), so the CPU tests also cover the GPU math.
//
// Conventions (they define the sub-gradient where the loss is not differentiable, and match
// PyTorch autograd on the reference in projects/SARL/sarl/ops/sal_reference.py):
//   * widths/heights/overlaps are max(u, 0); the derivative passes where u >= 0 (torch.clamp
//     would pass it only where u > 0)
//     (boxes that exactly touch still pull towards each other, degenerate boxes have area 0);
//   * min(a, b) / max(a, b) split the derivative equally between a and b when a == b
//     (equal boxes then get a ~zero gradient: they sit at the minimum of the loss);
//   * CIoU's alpha is a constant (as in torchvision and the CIoU paper).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace sarl {
namespace sal {

enum class BoxFormat : int { kXYXY = 0, kCXCYWH = 1 };
enum class LossType : int { kIoU2 = 0, kIoU = 1, kGIoU = 2, kDIoU = 3, kCIoU = 4 };
enum class Normalize : int { kBatch = 0, kImage = 1, kFixed = 2, kNone = 3 };
// weight_norm: "none" keeps the paper's weights; "mean" divides each by its group's mean weight.
enum class WeightNorm : int { kNone = 0, kMean = 1 };
enum class Reduction : int { kNone = 0, kSum = 1, kMean = 2 };

// Math functions that resolve to the right overload on host and device for float and double.
template <typename T>
SARL_HD_INLINE T math_log(T x) {
#ifdef __CUDA_ARCH__
  return ::log(x);
#else
  return std::log(x);
#endif
}
template <typename T>
SARL_HD_INLINE T math_atan(T x) {
#ifdef __CUDA_ARCH__
  return ::atan(x);
#else
  return std::atan(x);
#endif
}
template <typename T>
SARL_HD_INLINE bool math_isfinite(T x) {
#ifdef __CUDA_ARCH__
  return ::isfinite(x);
#else
  return std::isfinite(x);
#endif
}
constexpr double kPi = 3.14159265358979323846;

template <typename T>
SARL_HD_INLINE T clamp_min0(T u) {
  return u >= T(0) ? u : T(0);
}
// d clamp(u, min=0) / du with the convention above.
// The derivative selectors below are written as arithmetic on comparisons, not as branches:
// on random boxes a branch would be mispredicted half of the time.
template <typename T>
SARL_HD_INLINE T clamp_min0_grad(T u) {
  return static_cast<T>(u >= T(0));
}
template <typename T>
SARL_HD_INLINE T min2(T a, T b) {
  return a < b ? a : b;
}
template <typename T>
SARL_HD_INLINE T max2(T a, T b) {
  return a > b ? a : b;
}
// d min(a, b) / da and d max(a, b) / da (ties split equally).
template <typename T>
SARL_HD_INLINE T min2_grad_a(T a, T b) {
  return static_cast<T>(a < b) + T(0.5) * static_cast<T>(a == b);
}
template <typename T>
SARL_HD_INLINE T max2_grad_a(T a, T b) {
  return static_cast<T>(a > b) + T(0.5) * static_cast<T>(a == b);
}

// Running min/max of box areas that a NaN never enters: `a < lo` and `a > hi` are false for a
// NaN area (finite corners whose difference overflows give inf * 0 = NaN), so the CPU loops and
// the CUDA kernels skip it alike and the group's range stays that of its other boxes.
template <typename T>
SARL_HD_INLINE T area_range_min(T lo, T a) {
  return a < lo ? a : lo;
}
template <typename T>
SARL_HD_INLINE T area_range_max(T hi, T a) {
  return a > hi ? a : hi;
}

// A box read from memory in either format, as corners.
template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

// Corners of a box from its four stored numbers (x1, y1, x2, y2 or cx, cy, w, h).
template <BoxFormat kFmt, typename T>
SARL_HD_INLINE Box<T> corners(const Box<T>& raw) {
  if constexpr (kFmt == BoxFormat::kXYXY) {
    return raw;
  } else {
    // The same expressions as the reference (x - w / 2 == x - 0.5 * w exactly).
    const T hw = raw.x2 * T(0.5), hh = raw.y2 * T(0.5);
    return Box<T>{raw.x1 - hw, raw.y1 - hh, raw.x1 + hw, raw.y1 + hh};
  }
}
template <BoxFormat kFmt, typename T>
SARL_HD_INLINE Box<T> load_box(const T* p) {
  return corners<kFmt>(Box<T>{p[0], p[1], p[2], p[3]});
}

// Area of a box given in memory (degenerate boxes, x2 < x1, have area 0).
template <BoxFormat kFmt, typename T>
SARL_HD_INLINE T box_area(const T* p) {
  const Box<T> b = load_box<kFmt>(p);
  return clamp_min0(b.x2 - b.x1) * clamp_min0(b.y2 - b.y1);
}
template <typename T>
SARL_HD_INLINE T box_area(const T* p, BoxFormat fmt) {
  return fmt == BoxFormat::kXYXY ? box_area<BoxFormat::kXYXY>(p) : box_area<BoxFormat::kCXCYWH>(p);
}

// True when the four numbers of a box are finite (non-finite targets are rejected).
template <typename T>
SARL_HD_INLINE bool box_finite(const T* p) {
  return math_isfinite(p[0]) && math_isfinite(p[1]) && math_isfinite(p[2]) && math_isfinite(p[3]);
}

// ln(x) for x in [1, 2] (where the SAL weight needs it), as 2 atanh(t), t = (x - 1) / (x + 1) in
// [0, 1/3]: a short series without branches or calls, so the CPU loop vectorises (std::log does
// not) and CPU and GPU give the same bits. Error below 1e-8 (float) / 1e-15 (double) relative.
template <typename T>
SARL_HD_INLINE T log_1_to_2(T x) {
  constexpr int kTerms = sizeof(T) == 4 ? 8 : 16;  // (1/9)^k / (2k+1) below the type's precision
  const T t = (x - T(1)) / (x + T(1));
  const T t2 = t * t;
  T series = T(1) / T(2 * kTerms - 1);
#pragma unroll
  for (int k = kTerms - 2; k >= 0; --k) series = series * t2 + T(1) / T(2 * k + 1);
  return T(2) * t * series;
}

// s = (a - lo) / (hi - lo) clamped to [0, 1]; 0 when hi <= lo (a degenerate group: all equal).
// w = beta * ln(2 - s): beta * ln 2 for the smallest box (2 at beta = 2/ln2), 0 for the largest.
template <typename T>
SARL_HD_INLINE T scale_weight(T area, T lo, T hi, T beta) {
  const T spread = hi - lo;
  T s = (area - lo) / (spread > T(0) ? spread : T(1));
  s = spread > T(0) ? s : T(0);
  s = s < T(0) ? T(0) : (s > T(1) ? T(1) : s);
  return beta * log_1_to_2(T(2) - s);
}

// Divisor of weight_norm="mean" from a group's weight sum and count (NaN weights left out of both):
// the mean weight, or 1 where it is undefined (no box) or 0 (every weight 0, possible with "fixed"
// ranges when every box is at or above hi), so such a group's weights stay as they are (all 0).
template <typename AccT>
SARL_HD_INLINE AccT mean_weight_divisor(AccT sum, AccT count) {
  const AccT mean = count > AccT(0) ? sum / count : AccT(0);
  return mean != AccT(0) ? mean : AccT(1);
}

// Loss of one box pair and, when kGrad, d loss / d pred in the memory format (xyxy or cxcywh),
// multiplied by `scale` (the box's weight times the reduction factor), written to grad[0..3].
// Loss type, format and kGrad are compile-time so that the CPU loop has no branches and
// vectorises; the selectors are comparisons turned into numbers, which vectorise as masks.
// This form takes the four numbers of each box as stored (pred_raw, target_raw) and returns the
// gradient in `grad` (same layout), so the CPU loop can feed it from struct-of-arrays buffers.
template <LossType type, BoxFormat fmt, bool kGrad, typename T>
SARL_HD_INLINE T box_loss_values(const Box<T>& pred_raw, const Box<T>& target_raw, T eps, T scale, Box<T>& grad) {
  const Box<T> p = corners<fmt>(pred_raw);
  const Box<T> t = corners<fmt>(target_raw);
  // 0 when the four pred numbers are finite, NaN otherwise (x - x is NaN for NaN and +-inf). Added to the loss and
  // to each gradient: the clamps below would turn a NaN width into 0 and return a finite, wrong loss, so a
  // diverging prediction would go unseen. Arithmetic, not a branch, so the CPU loop still vectorises.
  const T poison = (pred_raw.x1 - pred_raw.x1) + (pred_raw.y1 - pred_raw.y1) + (pred_raw.x2 - pred_raw.x2) +
                   (pred_raw.y2 - pred_raw.y2);

  const T pw_raw = p.x2 - p.x1, ph_raw = p.y2 - p.y1;
  const T pw = clamp_min0(pw_raw), ph = clamp_min0(ph_raw);
  const T tw = clamp_min0(t.x2 - t.x1), th = clamp_min0(t.y2 - t.y1);
  const T area_p = pw * ph, area_t = tw * th;

  const T ix1 = max2(p.x1, t.x1), iy1 = max2(p.y1, t.y1);
  const T ix2 = min2(p.x2, t.x2), iy2 = min2(p.y2, t.y2);
  const T iw_raw = ix2 - ix1, ih_raw = iy2 - iy1;
  const T iw = clamp_min0(iw_raw), ih = clamp_min0(ih_raw);
  const T inter = iw * ih;
  const T den = area_p + area_t - inter + eps;  // union + eps
  const T iou = inter / den;

  // Loss as a function of (iou, extra terms); the partials below feed the chain rule.
  T loss, dl_diou = T(0);
  T dl_dinter_extra = T(0), dl_dareap_extra = T(0);  // from GIoU's union term
  T dl_dcw = T(0), dl_dch = T(0);                    // enclosing box width/height
  T dl_dpcx = T(0), dl_dpcy = T(0);                  // pred centre (DIoU/CIoU)
  T dl_dpw_extra = T(0), dl_dph_extra = T(0);        // aspect term (CIoU)
  T cw_raw = T(0), ch_raw = T(0);
  constexpr bool needs_enclosure = type == LossType::kGIoU || type == LossType::kDIoU || type == LossType::kCIoU;
  T cw = T(0), ch = T(0);
  if constexpr (needs_enclosure) {
    cw_raw = max2(p.x2, t.x2) - min2(p.x1, t.x1);
    ch_raw = max2(p.y2, t.y2) - min2(p.y1, t.y1);
    cw = clamp_min0(cw_raw);
    ch = clamp_min0(ch_raw);
  }
  if constexpr (type == LossType::kIoU2) {
      loss = T(1) - iou * iou;
      dl_diou = T(-2) * iou;
  } else if constexpr (type == LossType::kIoU) {
      loss = T(1) - iou;
      dl_diou = T(-1);
  } else if constexpr (type == LossType::kGIoU) {
      // 1 - iou + (c - union) / (c + eps), union = area_p + area_t - inter.
      const T c = cw * ch;
      const T uni = area_p + area_t - inter;
      const T cden = c + eps;
      loss = T(1) - iou + (c - uni) / cden;
      dl_diou = T(-1);
      const T dpen_dc = (eps + uni) / (cden * cden);
      const T dpen_duni = T(-1) / cden;
      dl_dareap_extra = dpen_duni;
      dl_dinter_extra = -dpen_duni;
      dl_dcw = dpen_dc * ch;
      dl_dch = dpen_dc * cw;
  } else {
      // 1 - iou + rho^2 / c^2 (+ alpha * v for CIoU).
      const T c2 = cw * cw + ch * ch + eps;
      const T dx = (p.x1 + p.x2) / T(2) - (t.x1 + t.x2) / T(2);
      const T dy = (p.y1 + p.y2) / T(2) - (t.y1 + t.y2) / T(2);
      const T rho2 = dx * dx + dy * dy;
      loss = T(1) - iou + rho2 / c2;
      dl_diou = T(-1);
      dl_dpcx = T(2) * dx / c2;
      dl_dpcy = T(2) * dy / c2;
      const T dl_dc2 = -rho2 / (c2 * c2);
      dl_dcw = dl_dc2 * T(2) * cw;
      dl_dch = dl_dc2 * T(2) * ch;
      if constexpr (type == LossType::kCIoU) {
        const T k = static_cast<T>(4.0 / (kPi * kPi));
        const T rp = pw / (ph + eps);
        const T diff = math_atan(tw / (th + eps)) - math_atan(rp);
        const T v = k * diff * diff;
        const T alpha = v / (T(1) - iou + v + eps);  // constant for autograd
        loss += alpha * v;
        // d v / d atan(rp) = -2 k diff; d atan(rp) / d pw = 1 / (1 + rp^2) / (ph + eps).
        const T g = alpha * T(-2) * k * diff / (T(1) + rp * rp) / (ph + eps);
        dl_dpw_extra = g;
        dl_dph_extra = -g * rp;
      }
  }

  if constexpr (kGrad) {
    const T diou_dinter = (den + inter) / (den * den);
    const T diou_dareap = -inter / (den * den);
    const T dl_dinter = dl_diou * diou_dinter + dl_dinter_extra;
    const T dl_dareap = dl_diou * diou_dareap + dl_dareap_extra;
    // inter = iw * ih, area_p = pw * ph.
    const T dl_diw = dl_dinter * ih * clamp_min0_grad(iw_raw);
    const T dl_dih = dl_dinter * iw * clamp_min0_grad(ih_raw);
    const T dl_dpw = (dl_dareap * ph + dl_dpw_extra) * clamp_min0_grad(pw_raw);
    const T dl_dph = (dl_dareap * pw + dl_dph_extra) * clamp_min0_grad(ph_raw);
    T gx1 = -dl_diw * max2_grad_a(p.x1, t.x1) - dl_dpw + dl_dpcx / T(2);
    T gx2 = dl_diw * min2_grad_a(p.x2, t.x2) + dl_dpw + dl_dpcx / T(2);
    T gy1 = -dl_dih * max2_grad_a(p.y1, t.y1) - dl_dph + dl_dpcy / T(2);
    T gy2 = dl_dih * min2_grad_a(p.y2, t.y2) + dl_dph + dl_dpcy / T(2);
    if constexpr (needs_enclosure) {
      const T gcw = dl_dcw * clamp_min0_grad(cw_raw);
      const T gch = dl_dch * clamp_min0_grad(ch_raw);
      gx2 += gcw * max2_grad_a(p.x2, t.x2);
      gx1 -= gcw * min2_grad_a(p.x1, t.x1);
      gy2 += gch * max2_grad_a(p.y2, t.y2);
      gy1 -= gch * min2_grad_a(p.y1, t.y1);
    }
    if constexpr (fmt == BoxFormat::kXYXY) {
      grad.x1 = scale * gx1 + poison;
      grad.y1 = scale * gy1 + poison;
      grad.x2 = scale * gx2 + poison;
      grad.y2 = scale * gy2 + poison;
    } else {
      // x1 = cx - w/2, x2 = cx + w/2.
      grad.x1 = scale * (gx1 + gx2) + poison;
      grad.y1 = scale * (gy1 + gy2) + poison;
      grad.x2 = scale * (gx2 - gx1) * T(0.5) + poison;
      grad.y2 = scale * (gy2 - gy1) * T(0.5) + poison;
    }
  }
  return loss + poison;
}

// Pointer form: reads [4] numbers per box, writes d loss/d pred to grad[0..3] when kGrad.
template <LossType type, BoxFormat fmt, bool kGrad, typename T>
SARL_HD_INLINE T box_loss(const T* pred_mem, const T* target_mem, T eps, T scale, T* grad) {
  const Box<T> p{pred_mem[0], pred_mem[1], pred_mem[2], pred_mem[3]};
  const Box<T> t{target_mem[0], target_mem[1], target_mem[2], target_mem[3]};
  Box<T> g{T(0), T(0), T(0), T(0)};
  const T loss = box_loss_values<type, fmt, kGrad>(p, t, eps, scale, g);
  if constexpr (kGrad) {
    grad[0] = g.x1;
    grad[1] = g.y1;
    grad[2] = g.x2;
    grad[3] = g.y2;
  }
  return loss;
}

// Runtime-dispatched form for the CUDA kernel (where the uniform branches cost little).
template <typename T>
SARL_HD_INLINE T box_loss(const T* pred, const T* target, BoxFormat fmt, LossType type, T eps, T scale,
                          T* grad) {
#define SARL_SAL_CASE(TYPE)                                                                       \
  case TYPE:                                                                                      \
    if (fmt == BoxFormat::kXYXY) {                                                                \
      return grad ? box_loss<TYPE, BoxFormat::kXYXY, true>(pred, target, eps, scale, grad)        \
                  : box_loss<TYPE, BoxFormat::kXYXY, false>(pred, target, eps, scale, grad);      \
    }                                                                                             \
    return grad ? box_loss<TYPE, BoxFormat::kCXCYWH, true>(pred, target, eps, scale, grad)        \
                : box_loss<TYPE, BoxFormat::kCXCYWH, false>(pred, target, eps, scale, grad);
  switch (type) {
    SARL_SAL_CASE(LossType::kIoU2)
    SARL_SAL_CASE(LossType::kIoU)
    SARL_SAL_CASE(LossType::kGIoU)
    SARL_SAL_CASE(LossType::kDIoU)
    SARL_SAL_CASE(LossType::kCIoU)
  }
#undef SARL_SAL_CASE
  return T(0);
}

}  // namespace sal
}  // namespace sarl
