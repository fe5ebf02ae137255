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
template <typename T>
SARL_HD_INLINE T clamp_min0_grad(T u) {
  return u >= T(0) ? T(1) : T(0);
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
  return a < b ? T(1) : (a == b ? T(0.5) : T(0));
}
template <typename T>
SARL_HD_INLINE T max2_grad_a(T a, T b) {
  return a > b ? T(1) : (a == b ? T(0.5) : T(0));
}

// A box read from memory in either format, as corners.
template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

template <typename T>
SARL_HD_INLINE Box<T> load_box(const T* p, BoxFormat fmt) {
  if (fmt == BoxFormat::kXYXY) return Box<T>{p[0], p[1], p[2], p[3]};
  // cxcywh -> corners; the same expressions as the reference (x - w / 2 == x - 0.5 * w exactly).
  const T hw = p[2] * T(0.5), hh = p[3] * T(0.5);
  return Box<T>{p[0] - hw, p[1] - hh, p[0] + hw, p[1] + hh};
}

// Area of a box given in memory (degenerate boxes, x2 < x1, have area 0).
template <typename T>
SARL_HD_INLINE T box_area(const T* p, BoxFormat fmt) {
  const Box<T> b = load_box(p, fmt);
  return clamp_min0(b.x2 - b.x1) * clamp_min0(b.y2 - b.y1);
}

// True when the four numbers of a box are finite (non-finite targets are rejected).
template <typename T>
SARL_HD_INLINE bool box_finite(const T* p) {
  return math_isfinite(p[0]) && math_isfinite(p[1]) && math_isfinite(p[2]) && math_isfinite(p[3]);
}

// s = (a - lo) / (hi - lo) clamped to [0, 1]; 0 when hi <= lo (a degenerate group: all equal).
// w = beta * ln(2 - s): 2 * beta * ln 2 ... for the smallest box, 0 for the largest.
template <typename T>
SARL_HD_INLINE T scale_weight(T area, T lo, T hi, T beta) {
  T s = T(0);
  if (hi > lo) {
    s = (area - lo) / (hi - lo);
    s = s < T(0) ? T(0) : (s > T(1) ? T(1) : s);
  }
  return beta * math_log(T(2) - s);
}

// Loss of one box pair and, when grad != nullptr, d loss / d pred in the memory format
// (xyxy or cxcywh), multiplied by `scale` (the box's weight times the reduction factor).
template <typename T>
SARL_HD_INLINE T box_loss(const T* pred_mem, const T* target_mem, BoxFormat fmt, LossType type,
                          T eps, T scale, T* grad) {
  const Box<T> p = load_box(pred_mem, fmt);
  const Box<T> t = load_box(target_mem, fmt);

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
  const bool needs_enclosure = type == LossType::kGIoU || type == LossType::kDIoU || type == LossType::kCIoU;
  T cw = T(0), ch = T(0);
  if (needs_enclosure) {
    cw_raw = max2(p.x2, t.x2) - min2(p.x1, t.x1);
    ch_raw = max2(p.y2, t.y2) - min2(p.y1, t.y1);
    cw = clamp_min0(cw_raw);
    ch = clamp_min0(ch_raw);
  }
  switch (type) {
    case LossType::kIoU2:
      loss = T(1) - iou * iou;
      dl_diou = T(-2) * iou;
      break;
    case LossType::kIoU:
      loss = T(1) - iou;
      dl_diou = T(-1);
      break;
    case LossType::kGIoU: {
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
      break;
    }
    case LossType::kDIoU:
    case LossType::kCIoU: {
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
      if (type == LossType::kCIoU) {
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
      break;
    }
    default:
      loss = T(0);
  }

  if (grad != nullptr) {
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
    if (needs_enclosure) {
      const T gcw = dl_dcw * clamp_min0_grad(cw_raw);
      const T gch = dl_dch * clamp_min0_grad(ch_raw);
      gx2 += gcw * max2_grad_a(p.x2, t.x2);
      gx1 -= gcw * min2_grad_a(p.x1, t.x1);
      gy2 += gch * max2_grad_a(p.y2, t.y2);
      gy1 -= gch * min2_grad_a(p.y1, t.y1);
    }
    if (fmt == BoxFormat::kXYXY) {
      grad[0] = scale * gx1;
      grad[1] = scale * gy1;
      grad[2] = scale * gx2;
      grad[3] = scale * gy2;
    } else {
      // x1 = cx - w/2, x2 = cx + w/2.
      grad[0] = scale * (gx1 + gx2);
      grad[1] = scale * (gy1 + gy2);
      grad[2] = scale * (gx2 - gx1) * T(0.5);
      grad[3] = scale * (gy2 - gy1) * T(0.5);
    }
  }
  return loss;
}

}  // namespace sal
}  // namespace sarl
