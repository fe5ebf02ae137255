// Argument checks of the relay ops, shared by the CPU and CUDA entry points (host code only).
// Every message names the op and the argument, so a wrong call is fixed from the error alone
// (relay_gate_backward checks the forward's arguments with the forward's messages).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace sarl {
namespace relay {

inline void check_float_tensor(const at::Tensor& t, const char* op, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op, ": ",
              name, " must be float32, float64, float16 or bfloat16, got ", st);
}

inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                       const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device(), " (all inputs must be on one device)");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but ", ref_name, " has dtype ", ref.scalar_type(), " (all inputs must share one dtype)");
}

inline void check_pool_input(const at::Tensor& g) {
  TORCH_CHECK(g.dim() == 4, "relay_pool: g must be 4-D [N, C, h, w], got shape ", g.sizes());
  check_float_tensor(g, "relay_pool", "g");
}

inline void check_gate_inputs(const at::Tensor& x, const at::Tensor& channel_logits,
                              const at::Tensor& spatial_logits, const std::optional<at::Tensor>& relay) {
  const char* op = "relay_gate";
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got shape ", x.sizes());
  check_float_tensor(x, op, "x");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  check_same(channel_logits, x, op, "channel_logits", "x");
  TORCH_CHECK(channel_logits.dim() == 2 && channel_logits.size(0) == N && channel_logits.size(1) == C, op,
              ": channel_logits must have shape [N, C] = [", N, ", ", C, "] (from x), got ",
              channel_logits.sizes());
  check_same(spatial_logits, x, op, "spatial_logits", "x");
  TORCH_CHECK(spatial_logits.dim() == 4 && spatial_logits.size(0) == N && spatial_logits.size(1) == 1 &&
                  spatial_logits.size(2) == H && spatial_logits.size(3) == W,
              op, ": spatial_logits must have shape [N, 1, H, W] = [", N, ", 1, ", H, ", ", W,
              "] (from x), got ", spatial_logits.sizes());
  if (relay.has_value() && relay->defined()) {
    const at::Tensor& r = *relay;
    check_same(r, x, op, "relay", "x");
    TORCH_CHECK(r.dim() == 4 && r.size(0) == N && r.size(1) == C, op, ": relay must have shape [N, C, h, w] = [",
                N, ", ", C, ", h, w] (from x), got ", r.sizes());
    TORCH_CHECK(H * W == 0 || r.size(2) * r.size(3) > 0, op, ": relay has an empty spatial size ", r.size(2),
                "x", r.size(3), " but x has ", H, "x", W, ": nothing to upsample from");
  }
}

inline void check_gate_backward_inputs(const at::Tensor& grad_out, const at::Tensor& x,
                                       const at::Tensor& channel_logits, const at::Tensor& spatial_logits,
                                       const std::optional<at::Tensor>& relay) {
  check_gate_inputs(x, channel_logits, spatial_logits, relay);
  check_same(grad_out, x, "relay_gate_backward", "grad_out", "x");
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "relay_gate_backward: grad_out must have the shape of x ",
              x.sizes(), ", got ", grad_out.sizes());
}

inline void check_pool_backward_inputs(const at::Tensor& grad_spatial, const at::Tensor& grad_channel,
                                       const at::Tensor& spatial_argmax, const at::Tensor& channel_argmax) {
  const char* op = "relay_pool_backward";
  TORCH_CHECK(grad_spatial.dim() == 4 && grad_spatial.size(1) == 2, op,
              ": grad_spatial must be [N, 2, h, w], got ", grad_spatial.sizes());
  check_float_tensor(grad_spatial, op, "grad_spatial");
  check_same(grad_channel, grad_spatial, op, "grad_channel", "grad_spatial");
  const int64_t N = grad_spatial.size(0), h = grad_spatial.size(2), w = grad_spatial.size(3);
  TORCH_CHECK(grad_channel.dim() == 3 && grad_channel.size(0) == N && grad_channel.size(1) == 2, op,
              ": grad_channel must be [N, 2, C] with N = ", N, ", got ", grad_channel.sizes());
  const int64_t C = grad_channel.size(2);
  TORCH_CHECK(spatial_argmax.scalar_type() == at::kLong && spatial_argmax.device() == grad_spatial.device() &&
                  spatial_argmax.sizes() == at::IntArrayRef({N, h, w}),
              op, ": spatial_argmax must be int64 [N, h, w] = [", N, ", ", h, ", ", w, "] on ",
              grad_spatial.device(), ", got ", spatial_argmax.scalar_type(), " ", spatial_argmax.sizes(), " on ",
              spatial_argmax.device());
  TORCH_CHECK(channel_argmax.scalar_type() == at::kLong && channel_argmax.device() == grad_spatial.device() &&
                  channel_argmax.sizes() == at::IntArrayRef({N, C}),
              op, ": channel_argmax must be int64 [N, C] = [", N, ", ", C, "] on ", grad_spatial.device(),
              ", got ", channel_argmax.scalar_type(), " ", channel_argmax.sizes(), " on ",
              channel_argmax.device());
}

}  // namespace relay
}  // namespace sarl
