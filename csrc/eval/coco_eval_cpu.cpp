// sarl::coco_eval_bbox: COCO-style box evaluation (evaluate + accumulate) on arrays, with the
// results of pycocotools' COCOeval (iouType "bbox", useCats 1) to the last bit.
//
// pycocotools runs a Python loop per detection, threshold and ground truth; faster-coco-eval
// moves that loop to C++ but still builds a dict per annotation. Here the annotations are
// columns (tensors), grouped by (image, category) with one counting sort, and the work is:
//
//   1. match (parallel over images, per category): each (image, category) pair sorts its
//      detections by score (stable, as numpy's mergesort), keeps the top maxDets[-1], computes
//      their IoU with the pair's ground truth once (pycocotools' bbIou, same arithmetic), and
//      runs COCO's greedy matching for every area range and IoU threshold. Each detection gets
//      one 32-bit code per area range: bit t = true positive at threshold t, bit 16 + t =
//      ignored (matched to a crowd / out-of-range ground truth, or unmatched and out of range);
//   2. accumulate (parallel over area range x maxDets x threshold): one stable sort of the
//      category's detections by score, then two passes with no per-detection buffers: a forward
//      pass finds, for each recall threshold, the first index whose recall reaches it, and a
//      backward pass rebuilds the cumulative counts to take the precision envelope there.
//
// The accumulation reproduces COCOeval.accumulate: recall = tp / npig, precision =
// tp / (fp + tp + eps) (eps = np.spacing(1)), the envelope from the right, searchsorted(side=
// "left") on recall, 0 where a recall threshold is never reached, -1 where a (category, area)
// cell has no ground truth that counts.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace sarl {
namespace eval {
namespace {

constexpr int kMaxThresholds = 16;  // IoU thresholds per 32-bit code: tp bits 0-15, ignore bits 16-31

// Detections of the pairs (image, category) in CSR form: rows of `order` for pair key
// image * num_categories + category are [start[key], start[key + 1]), in input order.
struct PairIndex {
  std::vector<int64_t> start;
  std::vector<int64_t> order;
};

PairIndex group_by_pair(const int64_t* image, const int64_t* category, int64_t n, int64_t num_images,
                        int64_t num_categories) {
  PairIndex index;
  const int64_t keys = num_images * num_categories;
  index.start.assign(keys + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++index.start[image[i] * num_categories + category[i] + 1];
  std::partial_sum(index.start.begin(), index.start.end(), index.start.begin());
  std::vector<int64_t> next(index.start.begin(), index.start.end() - 1);
  index.order.resize(n);
  for (int64_t i = 0; i < n; ++i) index.order[next[image[i] * num_categories + category[i]]++] = i;
  return index;
}

// pycocotools' bbIou (common/maskApi.c) for one pair of xywh boxes, same operations in the same
// order so the result is bit-identical; a crowd ground truth divides by the detection's area.
inline double bb_iou(const double* d, const double* g, bool crowd) {
  const double ga = g[2] * g[3];
  const double da = d[2] * d[3];
  const double w = std::fmin(d[2] + d[0], g[2] + g[0]) - std::fmax(d[0], g[0]);
  if (w <= 0) return 0.0;
  const double h = std::fmin(d[3] + d[1], g[3] + g[1]) - std::fmax(d[1], g[1]);
  if (h <= 0) return 0.0;
  const double i = w * h;
  const double u = crowd ? da : da + ga - i;
  return i / u;
}

inline bool outside(double area, const double* range) { return area < range[0] || area > range[1]; }

struct Inputs {
  const double* gt_boxes;
  const int64_t* gt_image;
  const int64_t* gt_category;
  const double* gt_area;
  const bool* gt_crowd;
  const double* dt_boxes;
  const int64_t* dt_image;
  const int64_t* dt_category;
  const double* dt_score;
  const double* dt_area;
  int64_t num_images, num_categories;
  std::vector<double> iou_thrs, rec_thrs, area_ranges;  // area_ranges: A x (lo, hi)
  std::vector<int64_t> max_dets;                         // ascending
};

// One category's detections after matching: slot s (concatenation over images in image order,
// within an image by score rank) has a score, its rank in its image and one code per area range.
struct CategoryMatches {
  std::vector<double> score;
  std::vector<int32_t> rank;
  std::vector<uint32_t> code;  // [slot * A + a]
  std::vector<int64_t> num_counted_gt;  // [A]: ground truth that is not ignored (npig)
};

CategoryMatches match_category(const Inputs& in, const PairIndex& gts, const PairIndex& dts, int64_t k) {
  const int64_t A = static_cast<int64_t>(in.area_ranges.size() / 2);
  const int64_t T = static_cast<int64_t>(in.iou_thrs.size());
  const int64_t max_det = in.max_dets.back();
  const int64_t K = in.num_categories;
  // Slots of each image (its top max_det detections of category k).
  std::vector<int64_t> base(in.num_images + 1, 0);
  for (int64_t i = 0; i < in.num_images; ++i) {
    const int64_t key = i * K + k;
    base[i + 1] = base[i] + std::min<int64_t>(dts.start[key + 1] - dts.start[key], max_det);
  }
  CategoryMatches out;
  const int64_t slots = base[in.num_images];
  out.score.resize(slots);
  out.rank.resize(slots);
  out.code.assign(slots * A, 0u);
  out.num_counted_gt.assign(A, 0);
  for (int64_t key = k; key < in.num_images * K; key += K) {
    for (int64_t r = gts.start[key]; r < gts.start[key + 1]; ++r) {
      const int64_t g = gts.order[r];
      for (int64_t a = 0; a < A; ++a) {
        out.num_counted_gt[a] += !(in.gt_crowd[g] || outside(in.gt_area[g], &in.area_ranges[2 * a]));
      }
    }
  }

  at::parallel_for(0, in.num_images, 16, [&](int64_t i0, int64_t i1) {
    std::vector<int64_t> dets, gorder;
    std::vector<double> ious;
    std::vector<uint8_t> ignored, crowd, taken;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t key = i * K + k;
      const int64_t nd_all = dts.start[key + 1] - dts.start[key];
      if (nd_all == 0) continue;  // no detection: nothing to record (its ground truth is counted above)
      // Detections by descending score; ties keep input order (numpy's stable mergesort).
      dets.assign(dts.order.begin() + dts.start[key], dts.order.begin() + dts.start[key + 1]);
      std::stable_sort(dets.begin(), dets.end(),
                       [&](int64_t x, int64_t y) { return in.dt_score[x] > in.dt_score[y]; });
      const int64_t nd = std::min<int64_t>(nd_all, max_det);
      const int64_t ng = gts.start[key + 1] - gts.start[key];
      const int64_t* gt_rows = gts.order.data() + gts.start[key];
      ious.resize(nd * ng);
      for (int64_t d = 0; d < nd; ++d) {
        for (int64_t g = 0; g < ng; ++g) {
          const int64_t gi = gt_rows[g];
          ious[d * ng + g] = bb_iou(in.dt_boxes + 4 * dets[d], in.gt_boxes + 4 * gi, in.gt_crowd[gi]);
        }
      }
      for (int64_t d = 0; d < nd; ++d) {
        out.score[base[i] + d] = in.dt_score[dets[d]];
        out.rank[base[i] + d] = static_cast<int32_t>(d);
      }
      gorder.resize(ng);
      ignored.resize(ng);
      crowd.resize(ng);
      taken.resize(ng);
      for (int64_t a = 0; a < A; ++a) {
        const double* range = &in.area_ranges[2 * a];
        // Ground truth that counts first, ignored after (stable, as COCOeval's argsort of _ignore).
        int64_t pos = 0;
        for (int pass = 0; pass < 2; ++pass) {
          for (int64_t g = 0; g < ng; ++g) {
            const int64_t gi = gt_rows[g];
            const bool ig = in.gt_crowd[gi] || outside(in.gt_area[gi], range);
            if (ig == (pass == 1)) {
              gorder[pos] = g;
              ignored[pos] = ig;
              crowd[pos] = in.gt_crowd[gi];
              ++pos;
            }
          }
        }
        for (int64_t t = 0; t < T; ++t) {
          std::fill(taken.begin(), taken.end(), uint8_t(0));
          for (int64_t d = 0; d < nd; ++d) {
            double best = std::min(in.iou_thrs[t], 1 - 1e-10);
            int64_t m = -1;
            const double* row = ious.data() + d * ng;
            for (int64_t p = 0; p < ng; ++p) {
              if (taken[p] && !crowd[p]) continue;               // matched already (crowds match many)
              if (m > -1 && !ignored[m] && ignored[p]) break;     // a real match beats any ignored one
              const double iou = row[gorder[p]];
              if (iou < best) continue;
              best = iou;
              m = p;
            }
            uint32_t& code = out.code[(base[i] + d) * A + a];
            if (m == -1) {
              if (outside(in.dt_area[dets[d]], range)) code |= 1u << (16 + t);
            } else {
              taken[m] = 1;
              code |= ignored[m] ? 1u << (16 + t) : 1u << t;
            }
          }
        }
      }
    }
  });
  return out;
}

// COCOeval.accumulate for one category: fills precision/scores [T, R, K, A, M] and recall [T, K, A, M].
void accumulate_category(const Inputs& in, const CategoryMatches& cm, int64_t k, double* precision, double* recall,
                         double* scores) {
  const int64_t T = static_cast<int64_t>(in.iou_thrs.size());
  const int64_t R = static_cast<int64_t>(in.rec_thrs.size());
  const int64_t K = in.num_categories;
  const int64_t A = static_cast<int64_t>(in.area_ranges.size() / 2);
  const int64_t M = static_cast<int64_t>(in.max_dets.size());
  // All slots by descending score, ties in slot order: numpy's mergesort of the concatenation.
  std::vector<int64_t> sorted(cm.score.size());
  std::iota(sorted.begin(), sorted.end(), int64_t(0));
  std::stable_sort(sorted.begin(), sorted.end(), [&](int64_t x, int64_t y) { return cm.score[x] > cm.score[y]; });
  const double eps = std::numeric_limits<double>::epsilon();  // np.spacing(1)

  at::parallel_for(0, A * M * T, 1, [&](int64_t j0, int64_t j1) {
    std::vector<int64_t> first_reach(R);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t a = j / (M * T), m = (j / T) % M, t = j % T;
      const double npig = static_cast<double>(cm.num_counted_gt[a]);
      if (cm.num_counted_gt[a] == 0) continue;  // stays -1
      const int64_t max_det = in.max_dets[m];
      const uint32_t tp_bit = 1u << t, ig_bit = 1u << (16 + t);
      // Forward: totals, and the first index whose recall reaches each recall threshold.
      int64_t tp = 0, fp = 0, nd = 0, next = 0;
      for (int64_t s : sorted) {
        if (cm.rank[s] >= max_det) continue;
        const uint32_t code = cm.code[s * A + a];
        tp += (code & tp_bit) != 0;
        fp += (code & (tp_bit | ig_bit)) == 0;
        const double rc = static_cast<double>(tp) / npig;
        while (next < R && rc >= in.rec_thrs[next]) first_reach[next++] = nd;
        ++nd;
      }
      const int64_t reached = next;
      const int64_t rec_index = (t * K + k) * A * M + a * M + m;
      recall[rec_index] = nd ? static_cast<double>(tp) / npig : 0.0;
      auto out_index = [&](int64_t r) { return (((t * R + r) * K + k) * A + a) * M + m; };
      for (int64_t r = reached; r < R; ++r) {
        precision[out_index(r)] = 0.0;
        scores[out_index(r)] = 0.0;
      }
      if (reached == 0) continue;
      // Backward: undo the counts one index at a time; the envelope is the running max of precision.
      double envelope = 0.0;
      int64_t r = reached - 1, index = nd - 1;
      for (auto it = sorted.rbegin(); it != sorted.rend() && r >= 0; ++it) {
        const int64_t s = *it;
        if (cm.rank[s] >= max_det) continue;
        const double pr = static_cast<double>(tp) / (static_cast<double>(fp) + static_cast<double>(tp) + eps);
        envelope = index == nd - 1 ? pr : std::max(envelope, pr);
        while (r >= 0 && first_reach[r] == index) {
          precision[out_index(r)] = envelope;
          scores[out_index(r)] = cm.score[s];
          --r;
        }
        const uint32_t code = cm.code[s * A + a];
        tp -= (code & tp_bit) != 0;
        fp -= (code & (tp_bit | ig_bit)) == 0;
        --index;
      }
    }
  });
}

at::Tensor checked(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t dim, int64_t rows,
                   int64_t cols = -1) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "coco_eval_bbox: ", name, " must be a CPU tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "coco_eval_bbox: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dim, "coco_eval_bbox: ", name, " must have ", dim, " dimensions, got shape ",
                    t.sizes());
  if (rows >= 0) TORCH_CHECK_VALUE(t.size(0) == rows, "coco_eval_bbox: ", name, " must have ", rows, " rows");
  if (cols >= 0) TORCH_CHECK_VALUE(t.size(1) == cols, "coco_eval_bbox: ", name, " must have ", cols, " columns");
  return t.contiguous();
}

void check_ids(const at::Tensor& t, int64_t limit, const char* name) {
  if (t.numel() == 0) return;
  const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < limit, "coco_eval_bbox: ", name, " must lie in [0, ", limit, "), got [", lo,
                    ", ", hi, "]");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coco_eval_bbox_cpu(
    const at::Tensor& gt_boxes_in, const at::Tensor& gt_image_in, const at::Tensor& gt_category_in,
    const at::Tensor& gt_area_in, const at::Tensor& gt_crowd_in, const at::Tensor& dt_boxes_in,
    const at::Tensor& dt_image_in, const at::Tensor& dt_category_in, const at::Tensor& dt_score_in,
    const at::Tensor& dt_area_in, int64_t num_images, int64_t num_categories, at::ArrayRef<double> iou_thresholds,
    at::ArrayRef<double> recall_thresholds, at::ArrayRef<double> area_ranges, at::ArrayRef<int64_t> max_dets) {
  TORCH_CHECK_VALUE(num_images >= 0 && num_categories >= 0, "coco_eval_bbox: num_images and num_categories must "
                    "be >= 0");
  TORCH_CHECK_VALUE(!iou_thresholds.empty() && iou_thresholds.size() <= kMaxThresholds,
                    "coco_eval_bbox: iou_thresholds must hold 1 to ", kMaxThresholds, " values");
  TORCH_CHECK_VALUE(!recall_thresholds.empty(), "coco_eval_bbox: recall_thresholds must not be empty");
  TORCH_CHECK_VALUE(!area_ranges.empty() && area_ranges.size() % 2 == 0,
                    "coco_eval_bbox: area_ranges must be (lo, hi) pairs, flattened");
  TORCH_CHECK_VALUE(!max_dets.empty() && std::is_sorted(max_dets.begin(), max_dets.end()) && max_dets.front() > 0,
                    "coco_eval_bbox: max_dets must be positive and ascending");
  for (size_t r = 1; r < recall_thresholds.size(); ++r) {
    TORCH_CHECK_VALUE(recall_thresholds[r] > recall_thresholds[r - 1],
                      "coco_eval_bbox: recall_thresholds must be increasing");
  }
  const int64_t G = gt_boxes_in.dim() > 0 ? gt_boxes_in.size(0) : 0;
  const int64_t D = dt_boxes_in.dim() > 0 ? dt_boxes_in.size(0) : 0;
  const at::Tensor gt_boxes = checked(gt_boxes_in, "gt_boxes", at::kDouble, 2, G, 4);
  const at::Tensor gt_image = checked(gt_image_in, "gt_image", at::kLong, 1, G);
  const at::Tensor gt_category = checked(gt_category_in, "gt_category", at::kLong, 1, G);
  const at::Tensor gt_area = checked(gt_area_in, "gt_area", at::kDouble, 1, G);
  const at::Tensor gt_crowd = checked(gt_crowd_in, "gt_crowd", at::kBool, 1, G);
  const at::Tensor dt_boxes = checked(dt_boxes_in, "dt_boxes", at::kDouble, 2, D, 4);
  const at::Tensor dt_image = checked(dt_image_in, "dt_image", at::kLong, 1, D);
  const at::Tensor dt_category = checked(dt_category_in, "dt_category", at::kLong, 1, D);
  const at::Tensor dt_score = checked(dt_score_in, "dt_score", at::kDouble, 1, D);
  const at::Tensor dt_area = checked(dt_area_in, "dt_area", at::kDouble, 1, D);
  check_ids(gt_image, num_images, "gt_image");
  check_ids(dt_image, num_images, "dt_image");
  check_ids(gt_category, num_categories, "gt_category");
  check_ids(dt_category, num_categories, "dt_category");
  TORCH_CHECK_VALUE(D == 0 || at::isfinite(dt_score).all().item<bool>(), "coco_eval_bbox: dt_score must be finite");

  Inputs in{gt_boxes.data_ptr<double>(), gt_image.data_ptr<int64_t>(), gt_category.data_ptr<int64_t>(),
            gt_area.data_ptr<double>(), gt_crowd.data_ptr<bool>(),
            dt_boxes.data_ptr<double>(), dt_image.data_ptr<int64_t>(), dt_category.data_ptr<int64_t>(),
            dt_score.data_ptr<double>(), dt_area.data_ptr<double>(), num_images, num_categories,
            iou_thresholds.vec(), recall_thresholds.vec(), area_ranges.vec(), max_dets.vec()};
  const int64_t T = iou_thresholds.size(), R = recall_thresholds.size(), K = num_categories,
                A = area_ranges.size() / 2, M = max_dets.size();
  const auto options = at::TensorOptions().dtype(at::kDouble);
  at::Tensor precision = at::full({T, R, K, A, M}, -1.0, options);
  at::Tensor recall = at::full({T, K, A, M}, -1.0, options);
  at::Tensor scores = at::full({T, R, K, A, M}, -1.0, options);
  if (num_images == 0 || K == 0) return {precision, recall, scores};
  const PairIndex gts = group_by_pair(in.gt_image, in.gt_category, G, num_images, K);
  const PairIndex dts = group_by_pair(in.dt_image, in.dt_category, D, num_images, K);
  for (int64_t k = 0; k < K; ++k) {
    const CategoryMatches cm = match_category(in, gts, dts, k);
    accumulate_category(in, cm, k, precision.data_ptr<double>(), recall.data_ptr<double>(),
                        scores.data_ptr<double>());
  }
  return {precision, recall, scores};
}

}  // namespace

TORCH_LIBRARY_IMPL(sarl, CPU, m) { m.impl("coco_eval_bbox", &coco_eval_bbox_cpu); }

}  // namespace eval
}  // namespace sarl
