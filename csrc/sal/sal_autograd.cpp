// Autograd of sarl::sal_loss, in C++ for every backend (registered for the Autograd key, the
// torchvision pattern): the forward redispatches below autograd to the CPU or CUDA kernel, which
// already returns d(sum of the returned loss)/d pred; the backward only scales it by grad_output.
// A C++ node costs a few microseconds per call where a Python autograd formula cost ~0.1 ms.
//
// The saved gradient lives in ctx->saved_data, not in a SavedVariable, so that the backward can
// hand it over: when the graph is not kept (no retain_graph / create_graph), no caller holds the
// tensor any more and it is a plain CPU/CUDA tensor, the backward scales it in place (or leaves it
// as is for the grad_output of 1 that loss.backward() passes) and returns it, so no [N, 4] buffer
// is allocated and AccumulateGrad can adopt it as pred.grad without a copy. In every other case
// (retain_graph, create_graph, the returned grad_pred still referenced, tracing with fake or
// functional tensors) it returns a new tensor grad_pred * grad_output, as before.
#include <ATen/ATen.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

namespace sarl {
namespace sal {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kNumLossArgs = 14;  // arguments of sarl::sal_loss (see csrc/sarl_ops.cpp)
constexpr const char* kSavedGrad = "grad_pred";

// The CPU/CUDA kernel of sarl::sal_loss, reached through the dispatcher.
std::tuple<at::Tensor, at::Tensor> sal_loss_below_autograd(
    const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& batch_index,
    const c10::optional<at::Tensor>& weight, c10::string_view box_format, c10::string_view loss_type,
    c10::string_view normalize, c10::string_view weight_norm, double beta, double area_lo, double area_hi,
    c10::string_view reduction, double eps, bool compute_grad) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("sarl::sal_loss", "")
                             .typed<decltype(sal_loss_below_autograd)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(pred, target, batch_index, weight, box_format, loss_type, normalize, weight_norm, beta, area_lo,
                 area_hi, reduction, eps, compute_grad);
}

// grad_pred [N, 4] times grad_loss ([N] for reduction="none", else a scalar).
at::Tensor scaled(const at::Tensor& grad_pred, const at::Tensor& grad_loss) {
  return grad_loss.dim() == 1 ? grad_pred * grad_loss.unsqueeze(-1) : grad_pred * grad_loss;
}

// The gradient of sarl::sal_loss under create_graph=True: grad_pred * grad_loss as a node whose own
// backward refuses, since the kernel computes no second derivative (treating the saved gradient
// as a constant would silently give a wrong one).
class SalLossGradient : public torch::autograd::Function<SalLossGradient> {
 public:
  static variable_list forward(AutogradContext* /*ctx*/, const at::Tensor& pred, const at::Tensor& grad_loss,
                               const at::Tensor& grad_pred) {
    (void)pred;  // an input only so that differentiating this gradient w.r.t. pred reaches backward()
    return {scaled(grad_pred, grad_loss)};
  }
  static variable_list backward(AutogradContext* /*ctx*/, variable_list /*grad_outputs*/) {
    TORCH_CHECK(false, "sarl::sal_loss has no second derivative (double backward is not supported)");
  }
};

class SalLossFunction : public torch::autograd::Function<SalLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& pred, const at::Tensor& target,
                               const c10::optional<at::Tensor>& batch_index, const c10::optional<at::Tensor>& weight,
                               c10::string_view box_format, c10::string_view loss_type, c10::string_view normalize,
                               c10::string_view weight_norm, double beta, double area_lo, double area_hi,
                               c10::string_view reduction, double eps, bool compute_grad) {
    auto [loss, grad_pred] = sal_loss_below_autograd(pred, target, batch_index, weight, box_format, loss_type,
                                                     normalize, weight_norm, beta, area_lo, area_hi, reduction, eps,
                                                     compute_grad);
    ctx->mark_non_differentiable({grad_pred});
    // Otherwise autograd fills a [N, 4] zero tensor for grad_pred's (never used) gradient on every backward.
    ctx->set_materialize_grads(false);
    if (compute_grad) {
      ctx->saved_data[kSavedGrad] = grad_pred;
      // Only for create_graph=True (see SalLossGradient); an IValue, so no version check on pred.
      ctx->saved_data["pred"] = pred;
    }
    return {loss, grad_pred};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list grads(kNumLossArgs);
    if (!ctx->needs_input_grad(0)) return grads;
    auto saved = ctx->saved_data.find(kSavedGrad);
    TORCH_CHECK(saved != ctx->saved_data.end(),
                "sarl::sal_loss saved no gradient for pred: it was called with compute_grad=False, or its graph "
                "was already freed by an earlier backward (use retain_graph=True to backpropagate twice)");
    at::Tensor grad_pred = saved->second.toTensor();
    at::Tensor grad_loss = grad_outputs[0];
    if (!grad_loss.defined()) return grads;  // no gradient reached the loss: none for pred (zero)
    if (at::GradMode::is_enabled()) {  // create_graph=True
      grads[0] = SalLossGradient::apply(ctx->saved_data["pred"].toTensor(), grad_loss, grad_pred)[0];
      return grads;
    }
    const bool keep_graph = torch::autograd::get_current_graph_task_keep_graph();
    if (!keep_graph) {
      // This node runs once: free what it holds now, so that grad_pred's only owner may be this frame.
      ctx->saved_data.clear();
    }
    // Nothing but this frame holds grad_pred (is_tensor_stealable also counts a Python object that only
    // the tensor keeps alive: the caller dropped the op's second output), so it can be handed over.
    const bool owned = !keep_graph && torch::autograd::impl::is_tensor_stealable(grad_pred) &&
                       !at::isTensorSubclassLike(grad_pred) &&
                       !at::isTensorSubclassLike(grad_loss) && grad_loss.scalar_type() == grad_pred.scalar_type() &&
                       grad_loss.device() == grad_pred.device();
    if (!owned) {
      grads[0] = scaled(grad_pred, grad_loss);
      return grads;
    }
    // A CPU scalar grad_loss of exactly 1 (loss.backward()) needs no pass over grad_pred at all.
    const bool unit = grad_loss.dim() == 0 && grad_loss.is_cpu() && grad_loss.item<double>() == 1.0;
    if (!unit) {
      if (grad_loss.dim() == 1) {
        grad_pred.mul_(grad_loss.unsqueeze(-1));
      } else {
        grad_pred.mul_(grad_loss);
      }
    }
    grads[0] = std::move(grad_pred);
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor> sal_loss_autograd(
    const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& batch_index,
    const c10::optional<at::Tensor>& weight, c10::string_view box_format, c10::string_view loss_type,
    c10::string_view normalize, c10::string_view weight_norm, double beta, double area_lo, double area_hi,
    c10::string_view reduction, double eps, bool compute_grad) {
  variable_list out = SalLossFunction::apply(pred, target, batch_index, weight, box_format, loss_type, normalize,
                                             weight_norm, beta, area_lo, area_hi, reduction, eps, compute_grad);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(sarl, Autograd, m) {
  m.impl("sal_loss", &sal_loss_autograd);
}

}  // namespace sal
}  // namespace sarl
