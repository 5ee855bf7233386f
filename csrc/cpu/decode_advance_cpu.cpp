// CPU kernel of tita::decode_advance: a decode step's [B]-sized bookkeeping in one pass, so the
// loop pays one op call instead of five (masked fill, stop-id test, or, clamp, all).
#include <torch/library.h>

#include <algorithm>

#include "../common/op_checks.h"

namespace tita::cpu {
namespace {

AdvanceOutputs decode_advance_cpu(const at::Tensor& sampled, const at::Tensor& finished, const at::Tensor& stop_ids,
                                  int64_t pad_id) {
  check_advance(sampled, finished, stop_ids, pad_id);
  TORCH_CHECK(sampled.device().is_cpu(), "decode_advance (CPU kernel) got tensors on ", sampled.device());
  const int64_t batch = sampled.size(0);
  const at::Tensor s = sampled.contiguous(), f = finished.contiguous(), stops = stop_ids.contiguous();
  AdvanceOutputs outputs = empty_advance_outputs(sampled, finished);
  auto& [record, feed, after, all] = outputs;
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
  return outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(tita, CPU, m) { m.impl("decode_advance", &decode_advance_cpu); }

}  // namespace tita::cpu
