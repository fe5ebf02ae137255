// CUDA kernels of the scale-adaptive IoU loss: sarl::sal_loss and sarl::sal_weights.
//
// The per-box math is sal_math.h (shared with the CPU loop). Passes:
//   1. normalize="batch": target-area min/max, reduced per block (warp shuffles + shared memory),
//      then one atomicMin/atomicMax per block on the float's bit pattern (areas are >= 0, so their
//      IEEE bits order like integers; a NaN area is skipped, as on the CPU). normalize="image":
//      per-box atomics into per-image slots.
//   1b. weight_norm="mean": each group's weight sum and count. "batch"/"fixed": per-block partial
//      sums, added by a single block in a fixed order (deterministic); "image": per-box double
//      atomics into per-image slots (the order of the additions may change the last bits of a
//      float64 result from run to run). Then each group's divisor (its mean weight) on the device.
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
#include <ATen/cuda/Atomic.cuh>
#include <torch/library.h>

#include <limits>

#include "common/cuda_launch.h"
#include "common/warp_reduce.h"
#include "sal/sal_checks.h"
#include "sal/sal_math.h"
#include "sal/sal_tensors.h"

namespace sarl {
namespace sal {
namespace {

constexpr int64_t kMaxBlocks = 1024;  // grid-stride beyond this: bounds the partial-sum buffer

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
__global__ void batch_area_range_kernel(const T* __restrict__ tgt, int64_t n, BoxFormat fmt,
                                        typename OrderedBits<T>::type* __restrict__ range_bits) {
  __shared__ T shared[kWarpsPerBlock];
  T lo = std::numeric_limits<T>::infinity(), hi = T(0);
  SARL_CUDA_1D_KERNEL_LOOP(i, n) {
    const T a = box_area(tgt + 4 * i, fmt);
    lo = area_range_min(lo, a);
    hi = area_range_max(hi, a);
  }
  lo = block_reduce(lo, shared, [](T a, T b) { return min2(a, b); }, std::numeric_limits<T>::infinity());
  hi = block_reduce(hi, shared, [](T a, T b) { return max2(a, b); }, T(0));
  if (threadIdx.x == 0) {
    atomicMin(&range_bits[0], OrderedBits<T>::encode(lo));
    atomicMax(&range_bits[1], OrderedBits<T>::encode(hi));
  }
}

template <typename T>
__global__ void image_area_range_kernel(const T* __restrict__ tgt, const int64_t* __restrict__ bidx, int64_t n,
                                        BoxFormat fmt, typename OrderedBits<T>::type* __restrict__ range_bits,
                                        int64_t groups) {
  SARL_CUDA_1D_KERNEL_LOOP(i, n) {
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
  const T* divisor;  // weight_norm="mean": [groups] mean weights (after pass 1b); else nullptr
};

// The SAL weight of box i before weight_norm (beta * ln(2 - s_i)).
template <typename T>
__device__ T raw_box_weight(const T* tgt_box, int64_t i, const WeightParams<T>& wp) {
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

// The weight of box i, divided by its group's mean weight with weight_norm="mean".
template <typename T>
__device__ T box_weight(const T* tgt_box, int64_t i, const WeightParams<T>& wp) {
  const T w = raw_box_weight(tgt_box, i, wp);
  if (wp.divisor == nullptr) return w;
  return w / wp.divisor[wp.norm == Normalize::kImage ? wp.bidx[i] : 0];
}

// Pass 1b, "batch"/"fixed": each block's sum and count of the weights that count in the mean
// (finite target, weight not NaN), into partial[block] and partial[blocks + block].
template <typename T>
__global__ void weight_sum_partials_kernel(const T* __restrict__ tgt, int64_t n, WeightParams<T> wp,
                                           double* __restrict__ partial) {
  __shared__ double shared[kWarpsPerBlock];
  double sum = 0.0, count = 0.0;
  SARL_CUDA_1D_KERNEL_LOOP(i, n) {
    const T* tb = tgt + 4 * i;
    if (!box_finite(tb)) continue;
    const T w = raw_box_weight(tb, i, wp);
    if (w != w) continue;
    sum += static_cast<double>(w);
    count += 1.0;
  }
  sum = block_reduce(sum, shared, [](double a, double b) { return a + b; }, 0.0);
  count = block_reduce(count, shared, [](double a, double b) { return a + b; }, 0.0);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = sum;
    partial[gridDim.x + blockIdx.x] = count;
  }
}

// One block adds the per-block sums and counts in a fixed order and writes the divisor of group 0.
template <typename T>
__global__ void batch_weight_divisor_kernel(const double* __restrict__ partial, int num_partials,
                                            T* __restrict__ divisor) {
  __shared__ double shared[kWarpsPerBlock];
  double sum = 0.0, count = 0.0;
  for (int i = threadIdx.x; i < num_partials; i += blockDim.x) {
    sum += partial[i];
    count += partial[num_partials + i];
  }
  sum = block_reduce(sum, shared, [](double a, double b) { return a + b; }, 0.0);
  count = block_reduce(count, shared, [](double a, double b) { return a + b; }, 0.0);
  if (threadIdx.x == 0) divisor[0] = static_cast<T>(mean_weight_divisor(sum, count));
}

// Pass 1b, "image": per-box atomics into sums[g] and counts[g] = sums[groups + g].
template <typename T>
__global__ void image_weight_sum_kernel(const T* __restrict__ tgt, int64_t n, WeightParams<T> wp,
                                        double* __restrict__ sums) {
  SARL_CUDA_1D_KERNEL_LOOP(i, n) {
    const T* tb = tgt + 4 * i;
    if (!box_finite(tb)) continue;
    const T w = raw_box_weight(tb, i, wp);
    if (w != w) continue;
    const int64_t g = wp.bidx[i];
    gpuAtomicAdd(&sums[g], static_cast<double>(w));
    gpuAtomicAdd(&sums[wp.groups + g], 1.0);
  }
}

template <typename T>
__global__ void image_weight_divisor_kernel(const double* __restrict__ sums, int64_t groups,
                                            T* __restrict__ divisor) {
  SARL_CUDA_1D_KERNEL_LOOP(g, groups) divisor[g] = static_cast<T>(mean_weight_divisor(sums[g], sums[groups + g]));
}

template <typename T, typename AccT>
__global__ void sal_loss_kernel(const T* __restrict__ pred, const T* __restrict__ tgt, const T* __restrict__ weight,
                                int64_t n, LossType type, T eps, T grad_scale, WeightParams<T> wp,
                                T* __restrict__ loss_out, T* __restrict__ grad, AccT* __restrict__ partial,
                                unsigned long long* __restrict__ first_bad_row) {
  __shared__ AccT shared[kWarpsPerBlock];
  AccT acc = AccT(0);
  SARL_CUDA_1D_KERNEL_LOOP(i, n) {
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
    acc = block_reduce(acc, shared, [](AccT a, AccT b) { return a + b; }, AccT(0));
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
  }
}

// One block adds the per-block partial sums in a fixed order and writes the scalar loss.
template <typename T, typename AccT>
__global__ void sum_partials_kernel(const AccT* __restrict__ partial, int num_partials, AccT scale, T* __restrict__ out) {
  __shared__ AccT shared[kWarpsPerBlock];
  AccT acc = AccT(0);
  for (int i = threadIdx.x; i < num_partials; i += blockDim.x) acc += partial[i];
  acc = block_reduce(acc, shared, [](AccT a, AccT b) { return a + b; }, AccT(0));
  if (threadIdx.x == 0) *out = static_cast<T>(acc * scale);
}

template <typename T>
__global__ void sal_weights_kernel(const T* __restrict__ tgt, int64_t n, WeightParams<T> wp, T* __restrict__ out,
                                   unsigned long long* __restrict__ first_bad_row) {
  SARL_CUDA_1D_KERNEL_LOOP(i, n) {
    const T* tb = tgt + 4 * i;
    if (!box_finite(tb)) {
      atomicMin(first_bad_row, static_cast<unsigned long long>(i));
      out[i] = T(0);
      continue;
    }
    out[i] = box_weight(tb, i, wp);
  }
}

int num_blocks(int64_t n) { return grid_blocks(n, kMaxBlocks); }

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
      batch_area_range_kernel<T><<<num_blocks(n), kThreadsPerBlock, 0, stream>>>(target.data_ptr<T>(), n, fmt,
                                                                                 range_bits_ptr<T>(bits));
    } else {
      image_area_range_kernel<T><<<num_blocks(n), kThreadsPerBlock, 0, stream>>>(
          target.data_ptr<T>(), bidx.data_ptr<int64_t>(), n, fmt, range_bits_ptr<T>(bits), groups);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return bits;
}

// weight_norm="mean": pass 1b, then each group's divisor in a [groups] tensor of T (returned; it
// must outlive the kernels that read it through wp.divisor).
template <typename T>
at::Tensor mean_weight_divisors(const at::Tensor& target, const WeightParams<T>& wp, cudaStream_t stream) {
  const int64_t n = target.size(0);
  at::Tensor divisor = at::ones({wp.groups}, target.options());
  if (n == 0) return divisor;
  const auto double_options = target.options().dtype(at::kDouble);
  if (wp.norm == Normalize::kImage) {
    at::Tensor sums = at::zeros({2 * wp.groups}, double_options);
    image_weight_sum_kernel<T><<<num_blocks(n), kThreadsPerBlock, 0, stream>>>(target.data_ptr<T>(), n, wp,
                                                                               sums.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    image_weight_divisor_kernel<T><<<grid_blocks(wp.groups), kThreadsPerBlock, 0, stream>>>(
        sums.data_ptr<double>(), wp.groups, divisor.data_ptr<T>());
  } else {
    const int blocks = num_blocks(n);
    at::Tensor partial = at::empty({2 * blocks}, double_options);
    weight_sum_partials_kernel<T><<<blocks, kThreadsPerBlock, 0, stream>>>(target.data_ptr<T>(), n, wp,
                                                                           partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    batch_weight_divisor_kernel<T><<<1, kThreadsPerBlock, 0, stream>>>(partial.data_ptr<double>(), blocks,
                                                                       divisor.data_ptr<T>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return divisor;
}

// The per-box weight's parameters. For "batch"/"image" they point into the range slots that
// area_range_bits fills on the device, and with weight_norm="mean" into the divisors: `bits` and
// `divisor` receive those tensors and must outlive the kernels.
template <typename T>
WeightParams<T> weight_params(const at::Tensor& target, const at::Tensor& bidx, Normalize norm, WeightNorm weight_norm,
                              BoxFormat fmt, double beta, double area_lo, double area_hi, cudaStream_t stream,
                              at::Tensor& bits, at::Tensor& divisor) {
  int64_t groups = 1;
  bits = area_range_bits<T>(target, bidx, norm, fmt, &groups, stream);
  WeightParams<T> wp{norm, fmt, static_cast<T>(beta), static_cast<T>(area_lo), static_cast<T>(area_hi),
                     bits.defined() ? range_bits_ptr<T>(bits) : nullptr,
                     bidx.defined() ? bidx.data_ptr<int64_t>() : nullptr, groups, nullptr};
  if (weight_norm == WeightNorm::kMean && norm != Normalize::kNone) {  // "none": every weight is 1 already
    divisor = mean_weight_divisors<T>(target, wp, stream);
    wp.divisor = divisor.data_ptr<T>();
  }
  return wp;
}

// The slot a kernel flags the first non-finite target row in (atomicMin); it starts past every row.
at::Tensor first_bad_row_slot(const at::Tensor& like) {
  return at::full({1}, std::numeric_limits<int64_t>::max(), like.options().dtype(at::kLong));
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
    c10::string_view normalize, c10::string_view weight_norm, double beta, double area_lo, double area_hi,
    c10::string_view reduction, double eps, bool compute_grad) {
  const LossOptions options = check_loss_call(pred_in, target_in, batch_index, weight, box_format, loss_type,
                                              normalize, weight_norm, area_lo, area_hi, reduction);
  const Reduction red = options.reduction;
  const int64_t n = pred_in.size(0);
  c10::cuda::CUDAGuard guard(pred_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const LossTensors t = loss_tensors(pred_in, target_in, batch_index, weight, options, compute_grad);
  at::Tensor first_bad_row = first_bad_row_slot(t.pred);

  AT_DISPATCH_FLOATING_TYPES(t.pred.scalar_type(), "sal_loss_cuda", [&] {
    using AccT = at::acc_type<scalar_t, true>;
    at::Tensor bits, divisor;
    const WeightParams<scalar_t> wp =
        weight_params<scalar_t>(t.target, t.batch_index, options.normalize, options.weight_norm, options.box_format,
                                beta, area_lo, area_hi, stream, bits, divisor);
    const int blocks = num_blocks(n);
    at::Tensor partial;
    if (red != Reduction::kNone) {
      partial = at::empty({blocks}, t.pred.options().dtype(c10::CppTypeToScalarType<AccT>::value));
    }
    sal_loss_kernel<scalar_t, AccT><<<blocks, kThreadsPerBlock, 0, stream>>>(
        t.pred.data_ptr<scalar_t>(), t.target.data_ptr<scalar_t>(),
        t.weight.defined() ? t.weight.data_ptr<scalar_t>() : nullptr, n, options.loss_type,
        static_cast<scalar_t>(eps), options.loss_scale<scalar_t>(n), wp,
        red == Reduction::kNone ? t.loss.data_ptr<scalar_t>() : nullptr,
        compute_grad ? t.grad.data_ptr<scalar_t>() : nullptr, partial.defined() ? partial.data_ptr<AccT>() : nullptr,
        reinterpret_cast<unsigned long long*>(first_bad_row.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (red != Reduction::kNone) {
      sum_partials_kernel<scalar_t, AccT><<<1, kThreadsPerBlock, 0, stream>>>(
          partial.data_ptr<AccT>(), blocks, options.loss_scale<AccT>(n), t.loss.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  assert_targets_finite(first_bad_row, n);
  return {t.loss, t.grad};
}

at::Tensor sal_weights_cuda(const at::Tensor& target_in, const c10::optional<at::Tensor>& batch_index,
                            c10::string_view box_format, c10::string_view normalize, c10::string_view weight_norm,
                            double beta, double area_lo, double area_hi) {
  const WeightOptions options =
      check_weights_call(target_in, batch_index, box_format, normalize, weight_norm, area_lo, area_hi);
  c10::cuda::CUDAGuard guard(target_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const WeightTensors t = weight_tensors(target_in, batch_index, options);
  const int64_t n = t.target.size(0);
  at::Tensor first_bad_row = first_bad_row_slot(t.target);
  AT_DISPATCH_FLOATING_TYPES(t.target.scalar_type(), "sal_weights_cuda", [&] {
    at::Tensor bits, divisor;
    const WeightParams<scalar_t> wp =
        weight_params<scalar_t>(t.target, t.batch_index, options.normalize, options.weight_norm, options.box_format,
                                beta, area_lo, area_hi, stream, bits, divisor);
    if (n > 0) {
      sal_weights_kernel<scalar_t><<<num_blocks(n), kThreadsPerBlock, 0, stream>>>(
          t.target.data_ptr<scalar_t>(), n, wp, t.weights.data_ptr<scalar_t>(),
          reinterpret_cast<unsigned long long*>(first_bad_row.data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  assert_targets_finite(first_bad_row, n);
  return t.weights;
}

}  // namespace

TORCH_LIBRARY_IMPL(sarl, CUDA, m) {
  m.impl("sal_loss", &sal_loss_cuda);
  m.impl("sal_weights", &sal_weights_cuda);
}

}  // namespace sal
}  // namespace sarl
