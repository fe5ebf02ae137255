// Inputs and outputs of the SAL ops' launchers, shared by the CPU and CUDA entry points (host code
// only): inputs made contiguous, outputs allocated, after sal_checks.h has checked the call.
#pragma once

#include <ATen/ATen.h>

#include "sal/sal_checks.h"

namespace sarl {
namespace sal {

struct LossTensors {
  at::Tensor pred, target;  // [N, 4]
  at::Tensor weight;        // [N], undefined when the call passed None
  at::Tensor batch_index;   // [N] int64, defined for normalize="image" only
  at::Tensor loss;          // [N] for reduction="none", else a scalar
  at::Tensor grad;          // [N, 4], or [0, 4] when compute_grad is false
};

inline LossTensors loss_tensors(const at::Tensor& pred, const at::Tensor& target,
                                const c10::optional<at::Tensor>& batch_index, const c10::optional<at::Tensor>& weight,
                                const LossOptions& options, bool compute_grad) {
  const int64_t n = pred.size(0);
  LossTensors t;
  t.pred = pred.contiguous();
  t.target = target.contiguous();
  t.weight = weight.has_value() ? weight->contiguous() : at::Tensor();
  t.batch_index = options.normalize == Normalize::kImage ? batch_index->contiguous() : at::Tensor();
  t.loss = options.reduction == Reduction::kNone ? at::empty({n}, t.pred.options()) : at::empty({}, t.pred.options());
  t.grad = at::empty({compute_grad ? n : 0, 4}, t.pred.options());
  return t;
}

struct WeightTensors {
  at::Tensor target;       // [N, 4]
  at::Tensor batch_index;  // [N] int64, defined for normalize="image" only
  at::Tensor weights;      // [N], the output
};

inline WeightTensors weight_tensors(const at::Tensor& target, const c10::optional<at::Tensor>& batch_index,
                                    const WeightOptions& options) {
  WeightTensors t;
  t.target = target.contiguous();
  t.batch_index = options.normalize == Normalize::kImage ? batch_index->contiguous() : at::Tensor();
  t.weights = at::empty({t.target.size(0)}, t.target.options());
  return t;
}

}  // namespace sal
}  // namespace sarl
