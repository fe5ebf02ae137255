// CUDA kernels of the scale-adaptive IoU loss: sarl::sal_loss and sarl::sal_weights.
//
// The per-box math is sal_math.h (shared with the CPU loop). Passes:
//   1. normalize="batch": target-area min/max, reduced per block (warp shuffles + shared memory),
//      then one atomicMin/atomicMax per block on the float's bit pattern (areas are >= 0, so their
//      IEEE bits order like integers; a NaN area is skipped, as on the CPU). normalize="image":
//      per-box atomics into per-image slots.
//   2. one grid-stride pass: weight, loss and d loss/d pred per box; the loss sum is reduced per
//      block into a partial buffer, and
//   3. a single block adds the partials in a fixed order (deterministic result).
// No pass copies anything to the host: a non-finite target is flagged on the device (atomicMin on
// the first bad row) and checked with at::_assert_async, which fails the stream with the message
// below instead of stalling it. "image" mode alone reads the group count (sizing its slots).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <limits>

#include "sal/sal_common.h"
#include "sal/sal_math.h"

namespace sarl {
namespace sal {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;  // grid-stride beyond this: bounds the partial-sum buffer

// Bit patterns of non-negative floating-point values order like signed integers. `type` is what the
// CUDA atomics take (int, long long); `storage` is the tensor element type that holds it: libtorch
// exports data_ptr<T> for int32_t and int64_t (`long` on Linux) but not for `long long`, so a
// data_ptr<long long>() call links yet leaves the library unloadable (undefined symbol).
template <typename T>
struct OrderedBits;
template <>
struct OrderedBits<float> {
  using type = int;
  using storage = int32_t;
  __device__ static int encode(float v) { return __float_as_int(v + 0.0f); }  // +0 turns -0 into +0
  __device__ static float decode(int b) { return __int_as_float(b); }
};
template <>
struct OrderedBits<double> {
  using type = long long;
  using storage = int64_t;
  __device__ static long long encode(double v) { return __double_as_longlong(v + 0.0); }
  __device__ static double decode(long long b) { return __longlong_as_double(b); }
};
static_assert(sizeof(OrderedBits<double>::type) == sizeof(OrderedBits<double>::storage), "bit storage size");

// The bit-pattern slots of a range tensor, typed for the atomics.
template <typename T>
typename OrderedBits<T>::type* range_bits_ptr(const at::Tensor& bits) {
  return reinterpret_cast<typename OrderedBits<T>::type*>(bits.data_ptr<typename OrderedBits<T>::storage>());
}

template <typename T>
__device__ T warp_reduce_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}
template <typename T>
__device__ T warp_reduce_min(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = min2(v, __shfl_down_sync(0xffffffffu, v, offset));
  return v;
}
template <typename T>
__device__ T warp_reduce_max(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = max2(v, __shfl_down_sync(0xffffffffu, v, offset));
  return v;
}

// Block-wide reduction; the result is valid in thread 0. `shared` holds one value per warp.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* shared, Op warp_op, T identity) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_op(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? shared[lane] : identity;
  if (warp == 0) v = warp_op(v);
  __syncthreads();
  return v;
}

template <typename T>
__global__ void batch_area_range_kernel(const T* __restrict__ tgt, int64_t n, BoxFormat fmt,
                                        typename OrderedBits<T>::type* __restrict__ range_bits) {
  __shared__ T shared[kThreads / 32];
  T lo = std::numeric_limits<T>::infinity(), hi = T(0);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const T a = box_area(tgt + 4 * i, fmt);
    lo = area_range_min(lo, a);
    hi = area_range_max(hi, a);
  }
  lo = block_reduce(lo, shared, [](T v) { return warp_reduce_min(v); }, std::numeric_limits<T>::infinity());
  hi = block_reduce(hi, shared, [](T v) { return warp_reduce_max(v); }, T(0));
  if (threadIdx.x == 0) {
    atomicMin(&range_bits[0], OrderedBits<T>::encode(lo));
    atomicMax(&range_bits[1], OrderedBits<T>::encode(hi));
  }
}

template <typename T>
__global__ void image_area_range_kernel(const T* __restrict__ tgt, const int64_t* __restrict__ bidx, int64_t n,
                                        BoxFormat fmt, typename OrderedBits<T>::type* __restrict__ range_bits,
                                        int64_t groups) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const T a = box_area(tgt + 4 * i, fmt);
    if (a != a) continue;  // NaN: skipped, as the CPU's running min/max does
    const auto bits = OrderedBits<T>::encode(a);
    const int64_t g = bidx[i];
    atomicMin(&range_bits[g], bits);
    atomicMax(&range_bits[groups + g], bits);
  }
}

// Everything the per-box weight needs, passed by value to the kernels.
template <typename T>
struct WeightParams {
  Normalize norm;
  BoxFormat fmt;
  T beta, fixed_lo, fixed_hi;
  const typename OrderedBits<T>::type* range_bits;  // [2] for "batch", [2 * groups] for "image"
  const int64_t* bidx;
  int64_t groups;
};

template <typename T>
__device__ T box_weight(const T* tgt_box, int64_t i, const WeightParams<T>& wp) {
  switch (wp.norm) {
    case Normalize::kNone:
      return T(1);
    case Normalize::kFixed:
      return scale_weight(box_area(tgt_box, wp.fmt), wp.fixed_lo, wp.fixed_hi, wp.beta);
    case Normalize::kBatch:
      return scale_weight(box_area(tgt_box, wp.fmt), OrderedBits<T>::decode(wp.range_bits[0]),
                          OrderedBits<T>::decode(wp.range_bits[1]), wp.beta);
    default: {
      const int64_t g = wp.bidx[i];
      return scale_weight(box_area(tgt_box, wp.fmt), OrderedBits<T>::decode(wp.range_bits[g]),
                          OrderedBits<T>::decode(wp.range_bits[wp.groups + g]), wp.beta);
    }
  }
}

template <typename T, typename AccT>
__global__ void sal_loss_kernel(const T* __restrict__ pred, const T* __restrict__ tgt, const T* __restrict__ weight,
                                int64_t n, LossType type, T eps, T grad_scale, WeightParams<T> wp,
                                T* __restrict__ loss_out, T* __restrict__ grad, AccT* __restrict__ partial,
                                unsigned long long* __restrict__ first_bad_row) {
  __shared__ AccT shared[kThreads / 32];
  AccT acc = AccT(0);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const T* tb = tgt + 4 * i;
    if (!box_finite(tb)) {
      atomicMin(first_bad_row, static_cast<unsigned long long>(i));
      continue;
    }
    T w = box_weight(tb, i, wp);
    if (weight != nullptr) w *= weight[i];
    const T l = box_loss(pred + 4 * i, tb, wp.fmt, type, eps, w * grad_scale, grad ? grad + 4 * i : nullptr);
    if (loss_out != nullptr) {
      loss_out[i] = w * l;
    } else {
      acc += static_cast<AccT>(w * l);
    }
  }
  if (partial != nullptr) {
    acc = block_reduce(acc, shared, [](AccT v) { return warp_reduce_sum(v); }, AccT(0));
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
  }
}

// One block adds the per-block partial sums in a fixed order and writes the scalar loss.
template <typename T, typename AccT>
__global__ void sum_partials_kernel(const AccT* __restrict__ partial, int num_partials, AccT scale, T* __restrict__ out) {
  __shared__ AccT shared[kThreads / 32];
  AccT acc = AccT(0);
  for (int i = threadIdx.x; i < num_partials; i += blockDim.x) acc += partial[i];
  acc = block_reduce(acc, shared, [](AccT v) { return warp_reduce_sum(v); }, AccT(0));
  if (threadIdx.x == 0) *out = static_cast<T>(acc * scale);
}

template <typename T>
__global__ void sal_weights_kernel(const T* __restrict__ tgt, int64_t n, WeightParams<T> wp, T* __restrict__ out,
                                   unsigned long long* __restrict__ first_bad_row) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const T* tb = tgt + 4 * i;
    if (!box_finite(tb)) {
      atomicMin(first_bad_row, static_cast<unsigned long long>(i));
      out[i] = T(0);
      continue;
    }
    out[i] = box_weight(tb, i, wp);
  }
}

int num_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, kMaxBlocks)));
}

// Fills the area ranges for "batch"/"image" (non-finite rows are caught by the main pass).
template <typename T>
at::Tensor area_range_bits(const at::Tensor& target, const at::Tensor& bidx, Normalize norm, BoxFormat fmt,
                           int64_t* groups_out, cudaStream_t stream) {
  using Storage = typename OrderedBits<T>::storage;
  const auto bits_dtype = sizeof(Storage) == 4 ? at::kInt : at::kLong;
  const int64_t n = target.size(0);
  *groups_out = 1;
  if (norm != Normalize::kBatch && norm != Normalize::kImage) return at::Tensor();
  int64_t groups = 1;
  if (norm == Normalize::kImage && n > 0) {
    const at::Tensor mm = at::stack({bidx.min(), bidx.max()}).cpu();  // one sync: sizes the group slots
    const int64_t lo = mm[0].item<int64_t>(), hi = mm[1].item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0, "batch_index must be >= 0, got ", lo);
    groups = hi + 1;
  }
  *groups_out = groups;
  // Layout [lo_0..lo_{G-1}, hi_0..hi_{G-1}], starting at lo = +inf and hi = 0 as bit patterns
  // (areas are >= 0).
  const int64_t inf_bits = sizeof(Storage) == 4 ? int64_t(0x7f800000) : int64_t(0x7ff0000000000000LL);
  at::Tensor bits = at::zeros({2 * groups}, target.options().dtype(bits_dtype));
  bits.narrow(0, 0, groups).fill_(inf_bits);
  if (n > 0) {
    if (norm == Normalize::kBatch) {
      batch_area_range_kernel<T><<<num_blocks(n), kThreads, 0, stream>>>(target.data_ptr<T>(), n, fmt,
                                                                         range_bits_ptr<T>(bits));
    } else {
      image_area_range_kernel<T><<<num_blocks(n), kThreads, 0, stream>>>(
          target.data_ptr<T>(), bidx.data_ptr<int64_t>(), n, fmt, range_bits_ptr<T>(bits), groups);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return bits;
}

// Fails the stream (no host copy, so the op stays asynchronous and CUDA-graph capturable) when a
// kernel flagged a non-finite target row. The CPU kernels raise a ValueError naming the row; here
// the row is on the device, so the message says how to find it.
void assert_targets_finite(const at::Tensor& first_bad_row, int64_t n) {
  if (n == 0) return;
  at::_assert_async(first_bad_row.ge(n).squeeze(0),
                    "sarl::sal_loss/sal_weights: target must be finite (a row has a NaN or infinite coordinate; "
                    "run the same call on the CPU to get the row number)");
}

std::tuple<at::Tensor, at::Tensor> sal_loss_cuda(
    const at::Tensor& pred_in, const at::Tensor& target_in, const c10::optional<at::Tensor>& batch_index,
    const c10::optional<at::Tensor>& weight, c10::string_view box_format, c10::string_view loss_type,
    c10::string_view normalize, double beta, double area_lo, double area_hi, c10::string_view reduction,
    double eps, bool compute_grad) {
  check_boxes(pred_in, "pred");
  const Normalize norm = check_weight_args(target_in, batch_index, normalize, area_lo, area_hi);
  check_loss_args(pred_in, target_in, weight);
  const BoxFormat fmt = parse_box_format(box_format);
  const LossType type = parse_loss_type(loss_type);
  const Reduction red = parse_reduction(reduction);
  const int64_t n = pred_in.size(0);
  c10::cuda::CUDAGuard guard(pred_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor pred = pred_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor weight_t = weight.has_value() ? weight->contiguous() : at::Tensor();
  const at::Tensor bidx_t = norm == Normalize::kImage ? batch_index->contiguous() : at::Tensor();

  at::Tensor loss = red == Reduction::kNone ? at::empty({n}, pred.options()) : at::empty({}, pred.options());
  at::Tensor grad = at::empty({compute_grad ? n : 0, 4}, pred.options());
  at::Tensor first_bad_row = at::full({1}, std::numeric_limits<int64_t>::max(), pred.options().dtype(at::kLong));

  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "sal_loss_cuda", [&] {
    using AccT = at::acc_type<scalar_t, true>;
    int64_t groups = 1;
    const at::Tensor bits = area_range_bits<scalar_t>(target, bidx_t, norm, fmt, &groups, stream);
    WeightParams<scalar_t> wp{norm, fmt, static_cast<scalar_t>(beta), static_cast<scalar_t>(area_lo),
                              static_cast<scalar_t>(area_hi),
                              bits.defined() ? range_bits_ptr<scalar_t>(bits) : nullptr,
                              bidx_t.defined() ? bidx_t.data_ptr<int64_t>() : nullptr, groups};
    const int blocks = num_blocks(n);
    at::Tensor partial;
    if (red != Reduction::kNone) partial = at::empty({blocks}, pred.options().dtype(c10::CppTypeToScalarType<AccT>::value));
    const scalar_t grad_scale = red == Reduction::kMean && n > 0 ? scalar_t(1) / static_cast<scalar_t>(n) : scalar_t(1);
    sal_loss_kernel<scalar_t, AccT><<<blocks, kThreads, 0, stream>>>(
        pred.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(),
        weight_t.defined() ? weight_t.data_ptr<scalar_t>() : nullptr, n, type, static_cast<scalar_t>(eps), grad_scale,
        wp, red == Reduction::kNone ? loss.data_ptr<scalar_t>() : nullptr,
        compute_grad ? grad.data_ptr<scalar_t>() : nullptr, partial.defined() ? partial.data_ptr<AccT>() : nullptr,
        reinterpret_cast<unsigned long long*>(first_bad_row.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (red != Reduction::kNone) {
      const AccT scale = red == Reduction::kMean && n > 0 ? AccT(1) / static_cast<AccT>(n) : AccT(1);
      sum_partials_kernel<scalar_t, AccT><<<1, kThreads, 0, stream>>>(partial.data_ptr<AccT>(), blocks, scale,
                                                                      loss.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  assert_targets_finite(first_bad_row, n);
  return {loss, grad};
}

at::Tensor sal_weights_cuda(const at::Tensor& target_in, const c10::optional<at::Tensor>& batch_index,
                            c10::string_view box_format, c10::string_view normalize, double beta, double area_lo,
                            double area_hi) {
  const Normalize norm = check_weight_args(target_in, batch_index, normalize, area_lo, area_hi);
  const BoxFormat fmt = parse_box_format(box_format);
  c10::cuda::CUDAGuard guard(target_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor bidx_t = norm == Normalize::kImage ? batch_index->contiguous() : at::Tensor();
  const int64_t n = target.size(0);
  at::Tensor out = at::empty({n}, target.options());
  at::Tensor first_bad_row = at::full({1}, std::numeric_limits<int64_t>::max(), target.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(target.scalar_type(), "sal_weights_cuda", [&] {
    int64_t groups = 1;
    const at::Tensor bits = area_range_bits<scalar_t>(target, bidx_t, norm, fmt, &groups, stream);
    WeightParams<scalar_t> wp{norm, fmt, static_cast<scalar_t>(beta), static_cast<scalar_t>(area_lo),
                              static_cast<scalar_t>(area_hi),
                              bits.defined() ? range_bits_ptr<scalar_t>(bits) : nullptr,
                              bidx_t.defined() ? bidx_t.data_ptr<int64_t>() : nullptr, groups};
    if (n > 0) {
      sal_weights_kernel<scalar_t><<<num_blocks(n), kThreads, 0, stream>>>(
          target.data_ptr<scalar_t>(), n, wp, out.data_ptr<scalar_t>(),
          reinterpret_cast<unsigned long long*>(first_bad_row.data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  assert_targets_finite(first_bad_row, n);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sarl, CUDA, m) {
  m.impl("sal_loss", &sal_loss_cuda);
  m.impl("sal_weights", &sal_weights_cuda);
}

}  // namespace sal
}  // namespace sarl
