// Inputs and outputs of the relay ops' launchers, shared by the CPU and CUDA entry points
// (host code only). Inputs are made contiguous NCHW: for a channels-last or strided input that
// is one extra copy (a read and a write of its size). Outputs are allocated contiguous NCHW, and
// the calls with nothing to compute get their final values here, so the kernels only ever see
// non-empty reductions.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace sarl {
namespace relay {

inline at::TensorOptions contiguous_options(const at::Tensor& like) {
  return like.options().memory_format(at::MemoryFormat::Contiguous);
}

// relay_pool's outputs for g [N, C, h, w].
struct PoolOutputs {
  at::Tensor spatial;         // [N, 2, h, w]
  at::Tensor channel;         // [N, 2, C]
  at::Tensor spatial_argmax;  // [N, h, w] int64
  at::Tensor channel_argmax;  // [N, C] int64
  bool needs_kernel;          // false when the values above are already final

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> as_tuple() const {
    return {spatial, channel, spatial_argmax, channel_argmax};
  }
};

inline PoolOutputs allocate_pool_outputs(const at::Tensor& g) {
  const int64_t N = g.size(0), C = g.size(1), h = g.size(2), w = g.size(3);
  const auto opts = contiguous_options(g);
  PoolOutputs out{at::empty({N, 2, h, w}, opts), at::empty({N, 2, C}, opts), at::empty({N, h, w}, opts.dtype(at::kLong)),
                  at::empty({N, C}, opts.dtype(at::kLong)), true};
  if (N == 0) {
    out.needs_kernel = false;
  } else if (C == 0 || h * w == 0) {  // reductions over an empty dimension: 0, argmax -1
    out.spatial.zero_();
    out.channel.zero_();
    out.spatial_argmax.fill_(-1);
    out.channel_argmax.fill_(-1);
    out.needs_kernel = false;
  }
  return out;
}

// relay_gate's inputs, contiguous; `relay` is undefined when the call passed None.
struct GateInputs {
  at::Tensor x, channel_logits, spatial_logits, relay;

  bool has_relay() const { return relay.defined(); }
};

inline GateInputs contiguous_gate_inputs(const at::Tensor& x, const at::Tensor& channel_logits,
                                         const at::Tensor& spatial_logits, const std::optional<at::Tensor>& relay) {
  const bool has_relay = relay.has_value() && relay->defined();
  return GateInputs{x.contiguous(), channel_logits.contiguous(), spatial_logits.contiguous(),
                    has_relay ? relay->contiguous() : at::Tensor()};
}

// relay_gate_backward's outputs; grad_relay is an empty [0] tensor when relay is None.
struct GateGrads {
  at::Tensor grad_x, grad_channel_logits, grad_spatial_logits, grad_relay;
  bool needs_kernel;  // false when x is empty: every gradient is then a sum over nothing, 0

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> as_tuple() const {
    return {grad_x, grad_channel_logits, grad_spatial_logits, grad_relay};
  }
};

inline GateGrads allocate_gate_grads(const at::Tensor& x, const at::Tensor& channel_logits,
                                     const at::Tensor& spatial_logits, const std::optional<at::Tensor>& relay) {
  const bool has_relay = relay.has_value() && relay->defined();
  const auto opts = contiguous_options(x);
  GateGrads grads{at::empty(x.sizes(), opts), at::empty(channel_logits.sizes(), opts),
                  at::empty(spatial_logits.sizes(), opts),
                  has_relay ? at::empty(relay->sizes(), opts) : at::empty({0}, opts), true};
  if (x.numel() == 0) {
    grads.grad_channel_logits.zero_();
    grads.grad_spatial_logits.zero_();
    grads.grad_relay.zero_();
    grads.needs_kernel = false;
  }
  return grads;
}

}  // namespace relay
}  // namespace sarl
