// CPU kernel of tita::decode_advance: a decode step's [B]-sized bookkeeping in one pass, so the
// loop pays one op call instead of five (masked fill, stop-id test, or, clamp, all).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace tita::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode_advance_cpu(const at::Tensor& sampled,
                                                                              const at::Tensor& finished,
                                                                              const at::Tensor& stop_ids,
                                                                              int64_t pad_id) {
  TORCH_CHECK(sampled.dim() == 1 && sampled.scalar_type() == at::kLong, "sampled must be int64 [B], got ",
              sampled.scalar_type(), " ", sampled.sizes());
  TORCH_CHECK(finished.dim() == 1 && finished.scalar_type() == at::kBool && finished.size(0) == sampled.size(0),
              "finished must be bool [", sampled.size(0), "], got ", finished.scalar_type(), " ", finished.sizes());
  TORCH_CHECK(stop_ids.dim() == 1 && stop_ids.scalar_type() == at::kLong, "stop_ids must be int64 [S], got ",
              stop_ids.scalar_type(), " ", stop_ids.sizes());
  TORCH_CHECK(pad_id >= 0, "pad_id must be >= 0, got ", pad_id);
  const int64_t batch = sampled.size(0);
  const at::Tensor s = sampled.contiguous(), f = finished.contiguous(), stops = stop_ids.contiguous();
  at::Tensor record = at::empty({batch}, sampled.options());
  at::Tensor feed = at::empty({batch, 1}, sampled.options());
  at::Tensor after = at::empty({batch}, finished.options());
  at::Tensor all = at::empty({}, finished.options());
  const int64_t* in = s.data_ptr<int64_t>();
  const bool* was = f.data_ptr<bool>();
  const int64_t* stop = stops.data_ptr<int64_t>();
  const int64_t* stop_end = stop + stops.numel();
  int64_t* rec = record.data_ptr<int64_t>();
  int64_t* next = feed.data_ptr<int64_t>();
  bool* now = after.data_ptr<bool>();
  bool every = true;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t token = was[b] ? pad_id : in[b];
    rec[b] = token;
    next[b] = token < 0 ? pad_id : token;
    now[b] = was[b] || token < 0 || std::find(stop, stop_end, token) != stop_end;
    every = every && now[b];
  }
  *all.data_ptr<bool>() = every;
  return {record, feed, after, all};
}

}  // namespace

TORCH_LIBRARY_IMPL(tita, CPU, m) { m.impl("decode_advance", &decode_advance_cpu); }

}  // namespace tita::cpu
