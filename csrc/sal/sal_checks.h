// Argument parsing and checks of the SAL ops, shared by the CPU and CUDA launchers (host code
// only): each launcher makes one call, check_loss_call or check_weights_call. Errors are raised
// as ValueError / TypeError naming the argument (TORCH_CHECK_VALUE/_TYPE).
#pragma once

#include <string_view>

#include <ATen/ATen.h>

#include "sal/sal_math.h"

namespace sarl {
namespace sal {

inline BoxFormat parse_box_format(std::string_view s) {
  if (s == "xyxy") return BoxFormat::kXYXY;
  if (s == "cxcywh") return BoxFormat::kCXCYWH;
  TORCH_CHECK_VALUE(false, "box_format must be 'xyxy' or 'cxcywh', got '", std::string(s), "'");
}

inline LossType parse_loss_type(std::string_view s) {
  if (s == "iou2") return LossType::kIoU2;
  if (s == "iou") return LossType::kIoU;
  if (s == "giou") return LossType::kGIoU;
  if (s == "diou") return LossType::kDIoU;
  if (s == "ciou") return LossType::kCIoU;
  TORCH_CHECK_VALUE(false, "loss_type must be one of 'iou2', 'iou', 'giou', 'diou', 'ciou', got '",
                    std::string(s), "'");
}

inline Normalize parse_normalize(std::string_view s) {
  if (s == "batch") return Normalize::kBatch;
  if (s == "image") return Normalize::kImage;
  if (s == "fixed") return Normalize::kFixed;
  if (s == "none") return Normalize::kNone;
  TORCH_CHECK_VALUE(false, "normalize must be one of 'batch', 'image', 'fixed', 'none', got '",
                    std::string(s), "'");
}

inline WeightNorm parse_weight_norm(std::string_view s) {
  if (s == "none") return WeightNorm::kNone;
  if (s == "mean") return WeightNorm::kMean;
  TORCH_CHECK_VALUE(false, "weight_norm must be 'none' or 'mean', got '", std::string(s), "'");
}

inline Reduction parse_reduction(std::string_view s) {
  if (s == "none") return Reduction::kNone;
  if (s == "sum") return Reduction::kSum;
  if (s == "mean") return Reduction::kMean;
  TORCH_CHECK_VALUE(false, "reduction must be 'none', 'sum' or 'mean', got '", std::string(s), "'");
}

inline void check_boxes(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) == 4, name, " must have shape [N, 4], got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64 in the kernel, got ", t.scalar_type());
}

// Checks of the weight arguments, shared by both ops; returns the normalisation mode.
inline Normalize check_weight_args(const at::Tensor& target, const c10::optional<at::Tensor>& batch_index,
                                   std::string_view normalize, double area_lo, double area_hi) {
  check_boxes(target, "target");
  const Normalize norm = parse_normalize(normalize);
  if (norm == Normalize::kImage) {
    TORCH_CHECK_VALUE(batch_index.has_value(), "batch_index is required when normalize='image'");
    const at::Tensor& b = *batch_index;
    TORCH_CHECK_TYPE(b.scalar_type() == at::kLong, "batch_index must be int64, got ", b.scalar_type());
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == target.size(0), "batch_index must have shape [N] = [",
                      target.size(0), "], got ", b.sizes());
    TORCH_CHECK_VALUE(b.device() == target.device(), "batch_index must be on ", target.device(),
                      " like target, got ", b.device());
  }
  if (norm == Normalize::kFixed) {
    TORCH_CHECK_VALUE(area_hi > area_lo, "area_range must satisfy hi > lo, got (", area_lo, ", ",
                      area_hi, ")");
  }
  return norm;
}

// Checks of sal_loss's pred/target pair and optional per-box weight (run after check_boxes(pred)
// and check_weight_args(target, ...)).
inline void check_loss_args(const at::Tensor& pred, const at::Tensor& target,
                            const c10::optional<at::Tensor>& weight) {
  TORCH_CHECK_VALUE(pred.size(0) == target.size(0), "pred and target must have the same N, got ",
                    pred.size(0), " and ", target.size(0));
  TORCH_CHECK_TYPE(pred.scalar_type() == target.scalar_type(), "pred and target must have the same dtype, got ",
                   pred.scalar_type(), " and ", target.scalar_type());
  TORCH_CHECK_VALUE(pred.device() == target.device(), "pred and target must be on the same device, got ",
                    pred.device(), " and ", target.device());
  if (weight.has_value()) {
    const int64_t n = pred.size(0);
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == n, "weight must have shape [N] = [", n,
                      "], got ", weight->sizes());
    TORCH_CHECK_TYPE(weight->scalar_type() == pred.scalar_type(), "weight must have the dtype of pred (",
                     pred.scalar_type(), "), got ", weight->scalar_type());
    TORCH_CHECK_VALUE(weight->device() == pred.device(), "weight must be on the device of pred (",
                      pred.device(), "), got ", weight->device());
  }
}

// sal_loss's string arguments, parsed.
struct LossOptions {
  BoxFormat box_format;
  LossType loss_type;
  Normalize normalize;
  WeightNorm weight_norm;
  Reduction reduction;

  // From the sum of the per-box losses to the returned loss: 1 / n for reduction="mean" over
  // n > 0 boxes, else 1. The gradient is scaled by it too.
  template <typename T>
  T loss_scale(int64_t n) const {
    return reduction == Reduction::kMean && n > 0 ? T(1) / static_cast<T>(n) : T(1);
  }
};

// Every check of a sal_loss call, in the order its errors are reported; returns the parsed strings.
inline LossOptions check_loss_call(const at::Tensor& pred, const at::Tensor& target,
                                   const c10::optional<at::Tensor>& batch_index,
                                   const c10::optional<at::Tensor>& weight, std::string_view box_format,
                                   std::string_view loss_type, std::string_view normalize,
                                   std::string_view weight_norm, double area_lo, double area_hi,
                                   std::string_view reduction) {
  check_boxes(pred, "pred");
  const Normalize norm = check_weight_args(target, batch_index, normalize, area_lo, area_hi);
  const WeightNorm wnorm = parse_weight_norm(weight_norm);
  check_loss_args(pred, target, weight);
  const BoxFormat fmt = parse_box_format(box_format);
  const LossType type = parse_loss_type(loss_type);
  const Reduction red = parse_reduction(reduction);
  return LossOptions{fmt, type, norm, wnorm, red};
}

// sal_weights's string arguments, parsed.
struct WeightOptions {
  BoxFormat box_format;
  Normalize normalize;
  WeightNorm weight_norm;
};

// Every check of a sal_weights call, in the order its errors are reported.
inline WeightOptions check_weights_call(const at::Tensor& target, const c10::optional<at::Tensor>& batch_index,
                                        std::string_view box_format, std::string_view normalize,
                                        std::string_view weight_norm, double area_lo, double area_hi) {
  const Normalize norm = check_weight_args(target, batch_index, normalize, area_lo, area_hi);
  const WeightNorm wnorm = parse_weight_norm(weight_norm);
  const BoxFormat fmt = parse_box_format(box_format);
  return WeightOptions{fmt, norm, wnorm};
}

}  // namespace sal
}  // namespace sarl
