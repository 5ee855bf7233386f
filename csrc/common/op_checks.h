// Host-side argument checks and views shared by the CPU and CUDA launchers of the tita ops.
// The Python wrappers (tita_ext/ops.py) raise friendlier errors first; these guard direct
// torch.ops.tita calls.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <tuple>

#include "contract.h"

namespace tita {

inline void check_logits(const at::Tensor& t, const char* name, const at::Tensor& base) {
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D [batch, vocab], got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.device() == base.device(), name, " is on ", t.device(), " but base_logits is on ", base.device());
  TORCH_CHECK(t.size(0) == base.size(0), name, " has batch ", t.size(0), " but base_logits has ", base.size(0));
  TORCH_CHECK(t.size(1) > 0, name, " has an empty vocabulary");
}

// Shared id range: the narrowest logits, capped by vocab_size when it is > 0.
inline int64_t check_inputs(const at::Tensor& base, const at::Tensor& reward, const c10::optional<at::Tensor>& ref,
                            int64_t vocab_size) {
  check_logits(base, "base_logits", base);
  check_logits(reward, "reward_logits", base);
  int64_t vocab = std::min(base.size(1), reward.size(1));
  if (ref.has_value()) {
    check_logits(*ref, "ref_logits", base);
    vocab = std::min(vocab, ref->size(1));
  }
  return vocab_size > 0 ? std::min(vocab, vocab_size) : vocab;
}

template <typename T>
inline ParamSource<T> param_source(double scalar, const c10::optional<at::Tensor>& rows, at::ScalarType dtype,
                                   const char* name, const at::Tensor& base) {
  if (!rows.has_value()) return ParamSource<T>{static_cast<T>(scalar), nullptr};
  const at::Tensor& t = *rows;
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == base.size(0), name, " must have shape [", base.size(0), "], got ",
              t.sizes());
  TORCH_CHECK(t.device() == base.device(), name, " is on ", t.device(), " but the logits are on ", base.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  return ParamSource<T>{static_cast<T>(scalar), t.data_ptr<T>()};
}

inline SamplingParams sampling_params(const at::Tensor& base, double alpha, const c10::optional<at::Tensor>& alpha_rows,
                                      double temperature, const c10::optional<at::Tensor>& temperature_rows,
                                      int64_t top_k, const c10::optional<at::Tensor>& top_k_rows, double top_p,
                                      const c10::optional<at::Tensor>& top_p_rows, double min_p,
                                      const c10::optional<at::Tensor>& min_p_rows, double plausibility,
                                      const c10::optional<at::Tensor>& plausibility_rows) {
  SamplingParams p;
  p.alpha = param_source<float>(alpha, alpha_rows, at::kFloat, "alpha_rows", base);
  p.temperature = param_source<float>(temperature, temperature_rows, at::kFloat, "temperature_rows", base);
  p.top_k = param_source<int64_t>(static_cast<double>(top_k), top_k_rows, at::kLong, "top_k_rows", base);
  p.top_k.scalar = top_k;
  p.top_p = param_source<float>(top_p, top_p_rows, at::kFloat, "top_p_rows", base);
  p.min_p = param_source<float>(min_p, min_p_rows, at::kFloat, "min_p_rows", base);
  p.plausibility = param_source<float>(plausibility, plausibility_rows, at::kFloat, "plausibility_rows", base);
  return p;
}

inline void check_seed(const at::Tensor& t, const char* name, const at::Tensor& base) {
  TORCH_CHECK(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK(t.numel() == 1 || (t.dim() == 1 && t.size(0) == base.size(0)), name,
              " must hold 1 value or one per row (", base.size(0), "), got shape ", t.sizes());
  TORCH_CHECK(t.device() == base.device(), name, " is on ", t.device(), " but the logits are on ", base.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// guided_sample's outputs, uninitialised, on the logits' device: tokens int64, logprob float32,
// token_reward float32, status int32, each [batch].
using SampleOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline SampleOutputs empty_sample_outputs(const at::Tensor& base) {
  const int64_t batch = base.size(0);
  const auto opts = base.options();
  return {at::empty({batch}, opts.dtype(at::kLong)), at::empty({batch}, opts.dtype(at::kFloat)),
          at::empty({batch}, opts.dtype(at::kFloat)), at::empty({batch}, opts.dtype(at::kInt))};
}

// Row address of the noise: a per-row seed addresses its noise with row 0, so a request draws
// the same numbers wherever it sits in the batch (mirrors reference._noise_rows).
inline bool per_row_seed(const at::Tensor& seed, int64_t batch) { return seed.numel() == batch && batch != 1; }

// decode_advance: sampled int64 [B], finished bool [B], stop_ids int64 [S], one device, pad >= 0.
inline void check_advance(const at::Tensor& sampled, const at::Tensor& finished, const at::Tensor& stop_ids,
                          int64_t pad_id) {
  TORCH_CHECK(sampled.dim() == 1 && sampled.scalar_type() == at::kLong, "sampled must be int64 [B], got ",
              sampled.scalar_type(), " ", sampled.sizes());
  TORCH_CHECK(finished.dim() == 1 && finished.scalar_type() == at::kBool && finished.size(0) == sampled.size(0),
              "finished must be bool [", sampled.size(0), "], got ", finished.scalar_type(), " ", finished.sizes());
  TORCH_CHECK(stop_ids.dim() == 1 && stop_ids.scalar_type() == at::kLong, "stop_ids must be int64 [S], got ",
              stop_ids.scalar_type(), " ", stop_ids.sizes());
  TORCH_CHECK(finished.device() == sampled.device() && stop_ids.device() == sampled.device(),
              "decode_advance: sampled, finished and stop_ids must be on one device");
  TORCH_CHECK(pad_id >= 0, "pad_id must be >= 0, got ", pad_id);
}

// decode_advance's outputs: record int64 [B], feed int64 [B, 1], finished_after bool [B], all bool [].
using AdvanceOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline AdvanceOutputs empty_advance_outputs(const at::Tensor& sampled, const at::Tensor& finished) {
  const int64_t batch = sampled.size(0);
  return {at::empty({batch}, sampled.options()), at::empty({batch, 1}, sampled.options()),
          at::empty({batch}, finished.options()), at::empty({}, finished.options())};
}

}  // namespace tita
