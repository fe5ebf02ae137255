// Every operator schema of the `sarl` library, in one place (the torchvision pattern).
// Kernels are registered per backend next to their sources, one file per op and backend
// (an op's backward with it):
//   TORCH_LIBRARY_IMPL(sarl, CPU, m)  in csrc/<family>/<op>_cpu.cpp  (e.g. relay/relay_pool_cpu.cpp)
//   TORCH_LIBRARY_IMPL(sarl, CUDA, m) in csrc/<family>/<op>_cuda.cu  (e.g. relay/relay_pool_cuda.cu)
// csrc/sal/sal_cpu.cpp and sal_cuda.cu hold both SAL ops, which share the area-range pass.
// Fake (meta) implementations are registered from Python (projects/SARL/sarl/ops/, with
// torch.library.register_fake), and so is the autograd of every op except sal_loss, whose
// autograd kernel is C++ (TORCH_LIBRARY_IMPL(sarl, Autograd, m) in csrc/sal/sal_autograd.cpp).
#include <Python.h>
#include <torch/library.h>

namespace sarl {

// Which backends this build carries (queried by sarl.ops.extension_info()).
static bool compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(sarl, m) {
  m.def("_compiled_with_cuda() -> bool", &compiled_with_cuda);

  // ---- SAL: scale-adaptive IoU loss (csrc/sal) -------------------------------------------
  // BEGIN SAL SCHEMAS
  // Loss of N box pairs with per-box weights beta * ln(2 - s_i) (s_i: normalised target area).
  // weight_norm "none" (the paper) keeps them; "mean" divides each by the mean weight of its
  // normalisation group (all N, or each image of batch_index for normalize="image").
  // Returns (loss, grad_pred): loss is [N] for reduction="none", else a scalar; grad_pred is
  // d(sum of the returned loss)/d pred ([N, 4], or [0, 4] when compute_grad is false), so the
  // backward only scales it by grad_output. Strings are parsed by the kernels (clear errors).
  // Argument positions are constants in projects/SARL/sarl/ops/sal.py (and the count in
  // csrc/sal/sal_autograd.cpp): keep them in step.
  m.def(
      "sal_loss(Tensor pred, Tensor target, Tensor? batch_index, Tensor? weight, str box_format, "
      "str loss_type, str normalize, str weight_norm, float beta, float area_lo, float area_hi, "
      "str reduction, float eps, bool compute_grad) -> (Tensor, Tensor)");
  // The per-box weights alone ([N]), for inspection and for losses written elsewhere.
  m.def(
      "sal_weights(Tensor target, Tensor? batch_index, str box_format, str normalize, str weight_norm, "
      "float beta, float area_lo, float area_hi) -> Tensor");
  // END SAL SCHEMAS

  // ---- SARL relay: pooled descriptors and gate (csrc/relay) ------------------------------
  // BEGIN RELAY SCHEMAS
  // relay_pool(g [N,C,h,w]) -> (spatial [N,2,h,w] = (mean_C, max_C), channel [N,2,C] = (avg_HW, max_HW),
  //   spatial_argmax [N,h,w] int64 (channel index), channel_argmax [N,C] int64 (flat y*w+x));
  //   max ties go to the first index; the arg-max outputs feed the backward.
  m.def("relay_pool(Tensor g) -> (Tensor spatial, Tensor channel, Tensor spatial_argmax, Tensor channel_argmax)");
  m.def("relay_pool_backward(Tensor grad_spatial, Tensor grad_channel, Tensor spatial_argmax, "
        "Tensor channel_argmax) -> Tensor");
  // relay_gate: x * (1 + sigmoid(channel_logits) * sigmoid(spatial_logits)) + nearest_up(relay, (H, W)).
  m.def("relay_gate(Tensor x, Tensor channel_logits, Tensor spatial_logits, Tensor? relay) -> Tensor");
  // Returns (grad_x, grad_channel_logits, grad_spatial_logits, grad_relay); grad_relay is an
  // empty [0] tensor when relay is None.
  m.def("relay_gate_backward(Tensor grad_out, Tensor x, Tensor channel_logits, Tensor spatial_logits, "
        "Tensor? relay) -> (Tensor, Tensor, Tensor, Tensor)");
  // END RELAY SCHEMAS

  // ---- Evaluation: COCO-style box AP on arrays (csrc/eval, CPU) ---------------------------
  // BEGIN EVAL SCHEMAS
  // COCOeval (bbox, useCats) evaluate + accumulate, bit-identical to pycocotools. Ground truth
  // gt_boxes [G,4] xywh float64, gt_image/gt_category [G] int64 (0-based), gt_area [G] float64
  // (the area the ranges test), gt_crowd [G] bool (crowd = ignore); detections dt_boxes [D,4],
  // dt_image, dt_category, dt_score, dt_area. area_ranges: (lo, hi) pairs flattened; max_dets
  // ascending. Returns precision [T,R,K,A,M], recall [T,K,A,M], scores [T,R,K,A,M] (float64,
  // -1 where a (category, area) cell has no ground truth that counts).
  m.def(
      "coco_eval_bbox(Tensor gt_boxes, Tensor gt_image, Tensor gt_category, Tensor gt_area, Tensor gt_crowd, "
      "Tensor dt_boxes, Tensor dt_image, Tensor dt_category, Tensor dt_score, Tensor dt_area, int num_images, "
      "int num_categories, float[] iou_thresholds, float[] recall_thresholds, float[] area_ranges, "
      "int[] max_dets) -> (Tensor precision, Tensor recall, Tensor scores)");
  // END EVAL SCHEMAS
}

}  // namespace sarl

// `import sarl._C` only needs a module object: loading the library runs the registrations
// above, and the ops are then reached through torch.ops.sarl.*. No pybind11 needed.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
