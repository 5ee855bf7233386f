// CPU implementations of tita::guided_sample and tita::guided_logprobs for one instruction set:
// compiled once per set by kernel_<isa>.cpp (simd.h), called by guided_ops_cpu.cpp.
//
// Work is split into (row, vocabulary slice) items so that a small batch still uses every
// thread; each item is one streaming scan (row_scan.h); slices of a row are merged and the row
// finished (candidates.h). No input is read twice except the rare rescan of a row whose
// plausibility floor rose after candidates had been dropped.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <vector>

#include "../common/op_checks.h"
#include "candidates.h"
#include "kernel_entry.h"
#include "kernel_stats.h"

namespace tita::cpu {
namespace TITA_CPU_ISA {
namespace {

enum class Dtype { kF32, kF16, kBF16 };

struct RowView {
  const void* ptr = nullptr;
  Dtype dtype = Dtype::kF32;
  int64_t stride = 1;  // along the vocabulary
};

struct Row {
  RowView base, reward, ref;  // ref.ptr == nullptr: no reference logits
};

Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return Dtype::kF16;
    case at::kBFloat16: return Dtype::kBF16;
    default: return Dtype::kF32;
  }
}

RowView row_view(const at::Tensor& t, int64_t row) {
  const auto offset = row * t.stride(0) * static_cast<int64_t>(t.element_size());
  return RowView{static_cast<const char*>(t.const_data_ptr()) + offset, dtype_of(t), t.stride(1)};
}

Row row_of(const at::Tensor& base, const at::Tensor& reward, const c10::optional<at::Tensor>& ref, int64_t row) {
  return Row{row_view(base, row), row_view(reward, row), ref.has_value() ? row_view(*ref, row) : RowView{}};
}

template <typename T>
TITA_INLINE void load_typed(const RowView& v, int64_t id0, int64_t n, float* dst) {
  const T* src = static_cast<const T*>(v.ptr) + id0 * v.stride;
  if (v.stride == 1) {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j * v.stride]);
  }
}

// ids [id0, id0 + n) of one input as fp32, non-finite -> -inf, padded with -inf to whole vectors.
TITA_INLINE void load_clean(const RowView& v, int64_t id0, int64_t n, float* dst) {
  const int64_t whole = n / kLanes * kLanes;
  if (v.dtype == Dtype::kF32 && v.stride == 1) {  // the common case: one vector pass, no copy loop
    const float* src = static_cast<const float*>(v.ptr) + id0;
    for (int64_t i = 0; i < whole; i += kLanes) vstore(dst + i, finite_or_neg_inf(vload(src + i)));
    if (whole == n) return;
    for (int64_t j = whole; j < n; ++j) dst[j] = src[j];
    for (int64_t j = n; j < whole + kLanes; ++j) dst[j] = -kInf;
    vstore(dst + whole, finite_or_neg_inf(vload(dst + whole)));
    return;
  }
  switch (v.dtype) {
    case Dtype::kF32: load_typed<float>(v, id0, n, dst); break;
    case Dtype::kF16: load_typed<c10::Half>(v, id0, n, dst); break;
    case Dtype::kBF16: load_typed<c10::BFloat16>(v, id0, n, dst); break;
  }
  const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
  for (int64_t j = n; j < padded; ++j) dst[j] = -kInf;
  for (int64_t i = 0; i < padded; i += kLanes) vstore(dst + i, finite_or_neg_inf(vload(dst + i)));
}

// A chunk as clean fp32: the row itself when it is fp32, contiguous, whole and all finite (no
// copy, the common case), else a cleaned copy in buf.
TITA_INLINE const float* load_chunk(const RowView& v, int64_t id0, int64_t len, float* buf) {
  if (v.dtype == Dtype::kF32 && v.stride == 1 && len == kChunk) {
    const float* src = static_cast<const float*>(v.ptr) + id0;
    vf poison = vsplat(0.0f);  // x * 0 is NaN exactly when x is NaN or +-inf
    for (int i = 0; i < kChunk; i += kLanes) poison += vload(src + i) * 0.0f;
    if (hsum(poison) == 0.0f) return src;
  }
  load_clean(v, id0, len, buf);
  return buf;
}

// One cleaned logit (the chosen token's, for the token reward).
float load_one(const RowView& v, int64_t id) {
  alignas(64) float x[kLanes];
  load_clean(v, id, 1, x);
  return x[0];
}

// The streaming scan of ids [v0, v1) of one row; compiled per instruction set (simd.h). The
// second pass of the two-pass route skips the reward / reference statistics (pass 1 has them).
TITA_INLINE void scan_range_body(const Row& in, const ScanTask& task, int64_t v0, int64_t v1, RangeState& st) {
  alignas(64) float b[kChunk], r[kChunk], f[kChunk], z[kChunk];
  const RowConfig& c = task.config;
  const bool use_floor = c.log_floor != -kInf;
  const bool row_stats = !task.second_pass;
  for (int64_t id0 = v0; id0 < v1; id0 += kChunk) {
    const int64_t len = std::min<int64_t>(kChunk, v1 - id0);
    const int n = static_cast<int>((len + kLanes - 1) / kLanes * kLanes);
    const float* bp = load_chunk(in.base, id0, len, b);
    const float* rp = load_chunk(in.reward, id0, len, r);
    const float* fp = in.ref.ptr != nullptr ? load_chunk(in.ref, id0, len, f) : bp;
    if (row_stats) {
      st.reward.merge(chunk_lse(rp, n));
      if (in.ref.ptr != nullptr && use_floor) st.base_max = std::max(st.base_max, chunk_max(bp, n));
      const OnlineLse ref_chunk = chunk_lse(fp, n);
      st.ref.merge(ref_chunk);
      if (in.ref.ptr == nullptr) st.base_max = std::max(st.base_max, ref_chunk.max);
    }

    const float floor_now = use_floor ? std::max(task.known_floor, st.base_max + c.log_floor) : -kInf;
    if (combine_chunk(c, bp, rp, fp, n, floor_now, z)) st.overflow = true;
    const int n_race = (n + kRaceBlock - 1) / kRaceBlock * kRaceBlock;  // whole race blocks of -inf padding
    for (int j = n; j < n_race; ++j) z[j] = -kInf;
    if (task.z_out != nullptr) std::memcpy(task.z_out + id0, z, len * sizeof(float));
    switch (task.route) {
      case Route::kDense: dense_chunk(c, task.noise, z, n_race, id0, st); break;
      case Route::kBuffer: sparse_chunk(c, z, bp, n, id0, st); break;
      case Route::kTwoPass:
        if (task.second_pass) {
          final_chunk(c, task.noise, task.cut, task.choose, z, n, n_race, id0, st);
        } else {
          histogram_chunk(c, z, n, st);
        }
        break;
    }
  }
  kernel_stats().ids_scanned.fetch_add(v1 - v0, std::memory_order_relaxed);
}
TITA_FLATTENED(, void, scan_range, (const Row& in, const ScanTask& task, int64_t v0, int64_t v1, RangeState& st),
               (in, task, v0, v1, st))

// Rewrites z (ids [v0, v1)) in place as log-probabilities of the filtered distribution.
TITA_INLINE void write_logprobs_body(const Row& in, const RowOutcome& o, int64_t v0, int64_t v1, float* out) {
  alignas(64) float b[kChunk];
  for (int64_t id0 = v0; id0 < v1; id0 += kChunk) {
    const int64_t len = std::min<int64_t>(kChunk, v1 - id0);
    if (o.floor != -kInf) load_clean(in.base, id0, len, b);
    for (int64_t j = 0; j < len; ++j) {
      const float z = out[id0 + j];
      const bool allowed = z >= o.tau && z != -kInf && (o.floor == -kInf || b[j] >= o.floor);
      out[id0 + j] = allowed ? z - o.log_norm : -kInf;
    }
  }
}
TITA_FLATTENED(, void, write_logprobs, (const Row& in, const RowOutcome& o, int64_t v0, int64_t v1, float* out), (in, o, v0, v1, out))


constexpr int64_t kMinSliceIds = 8192;
// Below this many ids per thread, waking the thread pool costs more than the scan it would share
// (a decode step of a small-vocabulary model: B=8 x V=512 runs inline). Sampling costs several
// times more per id than a greedy scan (noise, candidate buffers), so it shares smaller work.
constexpr int64_t kMinIdsPerThreadGreedy = 32768;
constexpr int64_t kMinIdsPerThreadSampling = 2048;

// at::parallel_for grain (items per thread at least) for items of `ids_per_item` ids each.
int64_t grain_for(int64_t ids_per_item, bool sampling) {
  const int64_t min_ids = sampling ? kMinIdsPerThreadSampling : kMinIdsPerThreadGreedy;
  return std::max<int64_t>(1, min_ids / std::max<int64_t>(1, ids_per_item));
}

// How many vocabulary slices each row is cut into so that every thread has work.
int64_t slices_per_row(int64_t batch, int64_t vocab) {
  const int64_t threads = at::get_num_threads();
  if (batch >= threads) return 1;
  return std::max<int64_t>(1, std::min((threads + batch - 1) / batch, vocab / kMinSliceIds));
}

struct Plan {
  int64_t batch, vocab, slices;
  std::vector<ScanTask> tasks;  // per row
  std::vector<Row> rows;

  // Slices start at multiples of kChunk, so race blocks and Philox counters stay aligned.
  std::pair<int64_t, int64_t> slice(int64_t s) const {
    const int64_t per = ((vocab + slices - 1) / slices + kChunk - 1) / kChunk * kChunk;
    return {std::min(vocab, s * per), std::min(vocab, (s + 1) * per)};
  }

  // Scan every (row, slice) of the rows in `todo` (all rows when empty) with tasks[row].
  void scan(const std::vector<ScanTask>& tasks_, const std::vector<char>* todo, std::vector<RangeState>& parts,
            int64_t grain) {
    at::parallel_for(0, batch * slices, grain, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t row = item / slices;
        if (!tasks_[row].config.valid || (todo != nullptr && !(*todo)[row])) continue;
        const auto [v0, v1] = slice(item % slices);
        scan_range(rows[row], tasks_[row], v0, v1, parts[item]);
      }
    });
  }

  // Merge the slices of `row` from parts into st.
  void merge_row(int64_t row, std::vector<RangeState>& parts, RangeState& st) const {
    st = std::move(parts[row * slices]);
    for (int64_t s = 1; s < slices; ++s) st.merge(parts[row * slices + s]);
  }

  // Scan every (row, slice), merge the slices of each row, finish each row; two-pass rows scan
  // once more (all of them in one parallel pass) before they finish.
  void run(bool choose, std::vector<RowOutcome>& outcomes, std::vector<RangeState>& merged) {
    bool sampling = false;
    for (const ScanTask& t : tasks) sampling = sampling || !t.config.greedy;
    const int64_t grain = grain_for(vocab / slices, sampling);
    kernel_stats().rows.fetch_add(batch, std::memory_order_relaxed);
    std::vector<RangeState> parts(batch * slices);
    scan(tasks, nullptr, parts, grain);
    std::vector<ScanTask> second(tasks);
    std::vector<char> needs_second(batch, 0);
    bool any_second = false;
    at::parallel_for(0, batch, grain_for(vocab, sampling), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        RowOutcome& o = outcomes[row];
        if (!tasks[row].config.valid) {
          o.status = kStatusBadParam;
          continue;
        }
        RangeState& st = merged[row];
        merge_row(row, parts, st);
        if (tasks[row].route == Route::kTwoPass && !st.overflow && st.zmax != -kInf) {
          second[row] = second_pass_task(tasks[row], st, choose);
          needs_second[row] = 1;
          continue;
        }
        finish_row(row, choose, st, o);
      }
    });
    for (char x : needs_second) any_second = any_second || x;
    if (!any_second) return;
    std::vector<RangeState> parts2(batch * slices);
    scan(second, &needs_second, parts2, grain);
    at::parallel_for(0, batch, grain_for(vocab, sampling), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        if (!needs_second[row]) continue;
        RangeState st2;
        merge_row(row, parts2, st2);
        kernel_stats().two_pass_rows.fetch_add(1, std::memory_order_relaxed);
        note_candidates(st2.cands.size());
        const ScanTask& t = second[row];
        if (finish_two_pass(t.config, t.noise, t.cut, st2, choose, outcomes[row])) continue;
        // The histogram's keys missed the cut (its margin rules this out): the buffer route, exact.
        kernel_stats().fallback_rows.fetch_add(1, std::memory_order_relaxed);
        ScanTask again = tasks[row];
        again.route = Route::kBuffer;
        again.z_out = nullptr;
        RangeState fresh;
        scan_range(rows[row], again, 0, vocab, fresh);
        outcomes[row] = RowOutcome{};
        TORCH_CHECK(finish_sparse(again.config, again.noise, fresh, choose, outcomes[row]),
                    "tita: internal error: fallback insufficient");
      }
    });
  }

  static ScanTask second_pass_task(const ScanTask& first, const RangeState& st, bool choose) {
    ScanTask t = first;
    t.second_pass = true;
    t.choose = choose;
    t.z_out = nullptr;  // pass 1 wrote it
    const RowConfig& c = first.config;
    t.cut.zmax = st.zmax;
    t.cut.min_p_cut = c.log_min_p != -kInf ? st.zmax + c.log_min_p : -kInf;
    t.cut.top_p = c.top_p < 1.0f;
    t.cut.keys = t.cut.top_p ? locate_top_p(st.hist, st.zmax, c.top_p) : CutKeys{0, 0};
    return t;
  }

  static void note_candidates(size_t n) {
    auto& peak = kernel_stats().max_candidates;
    int64_t seen = peak.load(std::memory_order_relaxed);
    while (static_cast<int64_t>(n) > seen && !peak.compare_exchange_weak(seen, static_cast<int64_t>(n))) {
    }
  }

  void finish_row(int64_t row, bool choose, RangeState& st, RowOutcome& o) {
    const ScanTask& task = tasks[row];
    if (st.overflow) {
      o.status = kStatusOverflow;
      return;
    }
    if (task.route != Route::kBuffer) {  // dense, or a two-pass row without a finite score
      o.log_norm = st.guided.value();
      o.token = st.best_id;
      o.z = st.best_z;
      if (st.guided.max == -kInf) o.status = kStatusNoFinite;
      return;
    }
    note_candidates(st.cands.size());
    if (finish_sparse(task.config, task.noise, st, choose, o)) return;
    // The plausibility floor rose after candidates were dropped: scan again knowing it.
    kernel_stats().rescan_rows.fetch_add(1, std::memory_order_relaxed);
    ScanTask again = task;
    again.known_floor = st.base_max + task.config.log_floor;
    again.z_out = nullptr;
    RangeState fresh;
    scan_range(rows[row], again, 0, vocab, fresh);
    fresh.base_max = st.base_max;
    fresh.reward = st.reward;
    fresh.ref = st.ref;
    st = std::move(fresh);
    o = RowOutcome{};
    TORCH_CHECK(finish_sparse(task.config, task.noise, st, choose, o), "tita: internal error: rescan insufficient");
  }
};

// Dense without filters; two passes for top-p rows and low min-p cuts without top-k or floor (their
// allowed set can be most of the row); the candidate buffer otherwise (top-k bounds it, a min-p cut
// within kMinPBuffer of the maximum too, a floor usually).
constexpr float kMinPBuffer = 10.0f;

Route route_of(const RowConfig& c) {
  if (c.dense()) return Route::kDense;
  const bool wide = c.top_p < 1.0f || c.log_min_p < -kMinPBuffer;
  return (wide && c.top_k == 0 && c.log_floor == -kInf) ? Route::kTwoPass : Route::kBuffer;
}

Plan make_plan(const at::Tensor& base, const at::Tensor& reward, const c10::optional<at::Tensor>& ref,
               const SamplingParams& params, int64_t vocab, const at::Tensor* seed, const at::Tensor* offset,
               float* z_out) {
  Plan plan;
  plan.batch = base.size(0);
  plan.vocab = vocab;
  plan.slices = slices_per_row(plan.batch, vocab);
  plan.tasks.resize(plan.batch);
  plan.rows.resize(plan.batch);
  const bool seed_per_row = seed != nullptr && per_row_seed(*seed, plan.batch);
  for (int64_t row = 0; row < plan.batch; ++row) {
    ScanTask& t = plan.tasks[row];
    t.config = make_row_config(params, row, vocab, ref.has_value());
    t.route = route_of(t.config);
    t.second_pass = false;
    t.choose = seed != nullptr;
    t.known_floor = -kInf;
    t.z_out = z_out == nullptr ? nullptr : z_out + row * base.size(1);
    if (seed != nullptr) {
      const int64_t* s = seed->const_data_ptr<int64_t>();
      const int64_t* o = offset->const_data_ptr<int64_t>();
      t.noise = NoiseAddress{static_cast<uint64_t>(s[seed->numel() == 1 ? 0 : row]),
                             static_cast<uint64_t>(o[offset->numel() == 1 ? 0 : row]),
                             static_cast<uint32_t>(seed_per_row ? 0 : row)};
    }
    plan.rows[row] = row_of(base, reward, ref, row);
  }
  return plan;
}

}  // namespace

SampleOutputs guided_sample_cpu(
    const at::Tensor& base, const at::Tensor& reward, const c10::optional<at::Tensor>& ref, double alpha,
    const c10::optional<at::Tensor>& alpha_rows, double temperature, const c10::optional<at::Tensor>& temperature_rows,
    int64_t top_k, const c10::optional<at::Tensor>& top_k_rows, double top_p,
    const c10::optional<at::Tensor>& top_p_rows, double min_p, const c10::optional<at::Tensor>& min_p_rows,
    double plausibility, const c10::optional<at::Tensor>& plausibility_rows, const at::Tensor& seed,
    const at::Tensor& offset, int64_t vocab_size) {
  const int64_t vocab = check_inputs(base, reward, ref, vocab_size);
  check_seed(seed, "seed", base);
  check_seed(offset, "offset", base);
  const SamplingParams params = sampling_params(base, alpha, alpha_rows, temperature, temperature_rows, top_k,
                                                top_k_rows, top_p, top_p_rows, min_p, min_p_rows, plausibility,
                                                plausibility_rows);
  const int64_t batch = base.size(0);
  SampleOutputs outputs = empty_sample_outputs(base);
  if (batch == 0) return outputs;
  auto& [tokens, logprob, token_reward, status] = outputs;

  Plan plan = make_plan(base, reward, ref, params, vocab, &seed, &offset, nullptr);
  std::vector<RowOutcome> outcomes(batch);
  std::vector<RangeState> merged(batch);
  plan.run(/*choose=*/true, outcomes, merged);

  auto* tok = tokens.data_ptr<int64_t>();
  auto* lp = logprob.data_ptr<float>();
  auto* rw = token_reward.data_ptr<float>();
  auto* stt = status.data_ptr<int32_t>();
  for (int64_t row = 0; row < batch; ++row) {
    const RowOutcome& o = outcomes[row];
    const bool ok = o.status == kStatusOk && o.token >= 0;
    stt[row] = ok ? kStatusOk : (o.status == kStatusOk ? kStatusNoFinite : o.status);
    tok[row] = ok ? o.token : -1;
    if (!ok) {
      lp[row] = rw[row] = NAN;
      continue;
    }
    const Row& in = plan.rows[row];
    const RangeState& st = merged[row];
    const float r = load_one(in.reward, o.token);
    const float f = load_one(in.ref.ptr != nullptr ? in.ref : in.base, o.token);
    lp[row] = o.z - o.log_norm;
    rw[row] = (r - st.reward.value()) - (f - st.ref.value());
  }
  return outputs;
}

at::Tensor guided_logprobs_cpu(const at::Tensor& base, const at::Tensor& reward, const c10::optional<at::Tensor>& ref,
                               double alpha, const c10::optional<at::Tensor>& alpha_rows, double temperature,
                               const c10::optional<at::Tensor>& temperature_rows, int64_t top_k,
                               const c10::optional<at::Tensor>& top_k_rows, double top_p,
                               const c10::optional<at::Tensor>& top_p_rows, double min_p,
                               const c10::optional<at::Tensor>& min_p_rows, double plausibility,
                               const c10::optional<at::Tensor>& plausibility_rows, int64_t vocab_size) {
  const int64_t vocab = check_inputs(base, reward, ref, vocab_size);
  const SamplingParams params = sampling_params(base, alpha, alpha_rows, temperature, temperature_rows, top_k,
                                                top_k_rows, top_p, top_p_rows, min_p, min_p_rows, plausibility,
                                                plausibility_rows);
  const int64_t batch = base.size(0), width = base.size(1);
  at::Tensor out = at::empty({batch, width}, base.options().dtype(at::kFloat));
  if (batch == 0) return out;
  float* data = out.data_ptr<float>();

  Plan plan = make_plan(base, reward, ref, params, vocab, nullptr, nullptr, data);
  std::vector<RowOutcome> outcomes(batch);
  std::vector<RangeState> merged(batch);
  plan.run(/*choose=*/false, outcomes, merged);

  at::parallel_for(0, batch * plan.slices, grain_for(vocab / plan.slices, /*sampling=*/false),
                   [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / plan.slices, s = item % plan.slices;
      float* row_out = data + row * width;
      const RowOutcome& o = outcomes[row];
      const auto [v0, v1] = plan.slice(s);
      if (o.status != kStatusOk) {
        std::fill(row_out + v0, row_out + v1, NAN);
      } else {
        write_logprobs(plan.rows[row], o, v0, v1, row_out);
      }
      if (s == plan.slices - 1) std::fill(row_out + vocab, row_out + width, o.status == kStatusOk ? -kInf : NAN);
    }
  });
  return out;
}

}  // namespace TITA_CPU_ISA
}  // namespace tita::cpu
