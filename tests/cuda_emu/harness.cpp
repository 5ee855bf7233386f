// The fused CUDA kernels (csrc/cuda/guided_*.cuh) run on the CPU emulation (emu.h), behind a C
// interface for ctypes (tests/test_cuda_emulated.py). The launch sequence mirrors
// csrc/cuda/guided_sample.cu launch_chain; the plan and scratch layout are the real ones
// (guided_plan.cuh), with the device's multiprocessor count given by the caller.
#include <cstdlib>
#include <memory>

#include "../../csrc/cuda/guided_finish.cuh"
#include "../../csrc/cuda/guided_plan.cuh"
#include "../../csrc/cuda/guided_scan.cuh"

using namespace tita;
using namespace tita::cuda;

namespace {

LogitsView view(const void* data, int dtype, const int64_t* shape_strides) {
  // shape_strides: row_stride, col_stride, width
  return LogitsView{data, static_cast<DType>(dtype), shape_strides[0], shape_strides[1], shape_strides[2]};
}

template <int kChunks>
void run_chain(emu::Pool& pool, KernelArgs& a, const Plan& p) {
  const unsigned rows = static_cast<unsigned>(a.in.batch < 65535 ? a.in.batch : 65535);
  const dim3 grid(static_cast<unsigned>(p.slices), rows);
  if (a.base_max != nullptr) pool.run(grid, [&] { base_max_kernel<kChunks>(a); });
  pool.run(grid, [&] { guided_scan_kernel<kChunks>(a); });
  pool.run(dim3(static_cast<unsigned>(a.in.batch)), [&] { guided_finish_kernel(a); });
  if (!a.choose) {
    const dim3 write_grid(static_cast<unsigned>((a.out_width + p.slice_len - 1) / p.slice_len), rows);
    pool.run(write_grid, [&] { write_logprobs_kernel<kChunks>(a); });
  }
}

}  // namespace

extern "C" {

// Returns the plan's chunks per thread (1 or kBigChunks), or -1 for bad arguments.
// logits: 3 inputs (ref may be null); dtypes: 0 fp32, 1 fp16, 2 bf16; geometry: 3 x (row stride,
// col stride, width). scalars: alpha, temperature, top_p, min_p, plausibility. rows: 6 per-row
// pointers (alpha, temperature, top_k (int64), top_p, min_p, plausibility), null = scalar.
int emu_guided(int choose, int sm_count, const void* const* logits, const int* dtypes, const int64_t* geometry,
               int64_t batch, int64_t vocab, const double* scalars, int64_t top_k, const void* const* rows,
               const int64_t* seed, int64_t seed_numel, const int64_t* offset, int64_t offset_numel, int seed_per_row,
               int64_t* tokens, float* logprob, float* token_reward, int32_t* status, float* out, int64_t out_width) {
  static emu::Pool pool;
  emu::sm_count = sm_count;
  KernelArgs a{};
  a.in.base = view(logits[0], dtypes[0], geometry);
  a.in.reward = view(logits[1], dtypes[1], geometry + 3);
  if (logits[2] != nullptr) a.in.ref = view(logits[2], dtypes[2], geometry + 6);
  a.in.batch = batch;
  a.in.vocab = vocab;
  SamplingParams& sp = a.in.params;
  sp.alpha = {static_cast<float>(scalars[0]), static_cast<const float*>(rows[0])};
  sp.temperature = {static_cast<float>(scalars[1]), static_cast<const float*>(rows[1])};
  sp.top_k = {top_k, static_cast<const int64_t*>(rows[2])};
  sp.top_p = {static_cast<float>(scalars[2]), static_cast<const float*>(rows[3])};
  sp.min_p = {static_cast<float>(scalars[3]), static_cast<const float*>(rows[4])};
  sp.plausibility = {static_cast<float>(scalars[4]), static_cast<const float*>(rows[5])};
  if (!inputs_ok(a.in)) return -1;
  a.noise = NoiseSource{seed, seed_numel, offset, offset_numel, seed_per_row != 0};
  a.choose = choose != 0;
  a.tokens = tokens;
  a.logprob = logprob;
  a.token_reward = token_reward;
  a.status = status;
  a.out = out;
  a.out_width = out_width;
  const Plan p = make_plan(a.in);
  std::unique_ptr<char, decltype(&std::free)> scratch(static_cast<char*>(std::aligned_alloc(256, p.bytes)), &std::free);
  std::memset(scratch.get(), 0xFF, p.bytes);  // uninitialised on the device: make stale reads visible (NaN)
  carve(a, p, scratch.get());
  if (p.chunks == kBigChunks) {
    run_chain<kBigChunks>(pool, a, p);
  } else {
    run_chain<1>(pool, a, p);
  }
  return p.chunks;
}

// The race's noise skipping must be conservative: over every uniform the noise can take
// (2^23 mantissas), count words that reach_limit would skip although their Gumbel noise reaches
// `need`. Must be 0 for every need.
int64_t emu_reach_violations(float need) {
  const float limit = reach_limit(need);
  int64_t bad = 0;
  for (uint32_t m = 0; m < (1u << 23); ++m) {
    const uint32_t bits = m << 9;
    if (!may_reach(bits, limit) && gumbel_from_bits<float>(bits) >= need) ++bad;
  }
  return bad;
}

// How many of the 2^23 noise words reach_limit lets through (the cost of the skipping).
int64_t emu_reach_passing(float need) {
  const float limit = reach_limit(need);
  int64_t pass = 0;
  for (uint32_t m = 0; m < (1u << 23); ++m) pass += may_reach(m << 9, limit) ? 1 : 0;
  return pass;
}

}  // extern "C"
