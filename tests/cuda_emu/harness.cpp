// The fused CUDA kernels (csrc/cuda/guided_*.cuh) run on the CPU emulation (emu.h), behind a C
// interface for ctypes (tests/test_cuda_emulated.py). The real host code runs: guided_sample.cu's
// launch_guided_sample / launch_guided_logprobs (argument checks, make_plan, carve, launch_chain),
// with TITA_LAUNCH running each grid on the emulation's pool and the device's multiprocessor count
// given by the caller.
#include <cstdlib>
#include <memory>

#include "../../csrc/cuda/guided_sample.cu"

using namespace tita;
using namespace tita::cuda;

namespace {

size_t last_scratch_bytes = 0;  // guided_scratch_bytes of the last emu_guided call

LogitsView view(const void* data, int dtype, const int64_t* shape_strides) {
  // shape_strides: row_stride, col_stride, width
  return LogitsView{data, static_cast<DType>(dtype), shape_strides[0], shape_strides[1], shape_strides[2]};
}

}  // namespace

extern "C" {

// Returns the plan's chunks per thread (1 or kBigChunks), or -1 when the launcher refused its
// arguments. logits: 3 inputs (ref may be null); dtypes: 0 fp32, 1 fp16, 2 bf16; geometry:
// 3 x (row stride, col stride, width). scalars: alpha, temperature, top_p, min_p, plausibility.
// rows: 6 per-row pointers (alpha, temperature, top_k (int64), top_p, min_p, plausibility), null =
// scalar. Counters (emu_counters) are reset first.
int emu_guided(int choose, int sm_count, const void* const* logits, const int* dtypes, const int64_t* geometry,
               int64_t batch, int64_t vocab, const double* scalars, int64_t top_k, const void* const* rows,
               const int64_t* seed, int64_t seed_numel, const int64_t* offset, int64_t offset_numel, int seed_per_row,
               int64_t* tokens, float* logprob, float* token_reward, int32_t* status, float* out, int64_t out_width) {
  emu::sm_count = sm_count;
  GuidedInputs in;
  in.base = view(logits[0], dtypes[0], geometry);
  in.reward = view(logits[1], dtypes[1], geometry + 3);
  if (logits[2] != nullptr) in.ref = view(logits[2], dtypes[2], geometry + 6);
  in.batch = batch;
  in.vocab = vocab;
  SamplingParams& sp = in.params;
  sp.alpha = {static_cast<float>(scalars[0]), static_cast<const float*>(rows[0])};
  sp.temperature = {static_cast<float>(scalars[1]), static_cast<const float*>(rows[1])};
  sp.top_k = {top_k, static_cast<const int64_t*>(rows[2])};
  sp.top_p = {static_cast<float>(scalars[2]), static_cast<const float*>(rows[3])};
  sp.min_p = {static_cast<float>(scalars[3]), static_cast<const float*>(rows[4])};
  sp.plausibility = {static_cast<float>(scalars[4]), static_cast<const float*>(rows[5])};
  const size_t bytes = guided_scratch_bytes(in);
  last_scratch_bytes = bytes;
  std::unique_ptr<char, decltype(&std::free)> scratch(static_cast<char*>(std::aligned_alloc(256, bytes + 256)),
                                                      &std::free);
  std::memset(scratch.get(), 0xFF, bytes + 256);  // uninitialised on the device: make stale reads visible (NaN)
  emu::reset_counters(batch);
  cudaError_t e;
  if (choose) {
    SampleArgs args;
    args.in = in;
    args.noise = NoiseSource{seed, seed_numel, offset, offset_numel, seed_per_row != 0};
    args.tokens = tokens;
    args.logprob = logprob;
    args.token_reward = token_reward;
    args.status = status;
    args.scratch = scratch.get();
    args.scratch_bytes = bytes;
    e = launch_guided_sample(args, nullptr);
  } else {
    LogprobsArgs args;
    args.in = in;
    args.out = out;
    args.out_width = out_width;
    args.scratch = scratch.get();
    args.scratch_bytes = bytes;
    e = launch_guided_logprobs(args, nullptr);
  }
  if (e != cudaSuccess) return -1;
  return make_plan(in).chunks;
}

// Bytes the last emu_guided call loaded from and stored to global memory (logits, scratch,
// outputs), its scratch size, and the path of each of its rows (RowPath; 0: none recorded).
void emu_counters(int64_t* loaded, int64_t* stored, int32_t* paths, int64_t rows) {
  *loaded = emu::loaded.load();
  *stored = emu::stored.load();
  for (int64_t r = 0; r < rows && static_cast<size_t>(r) < emu::paths.size(); ++r) paths[r] = emu::paths[r];
}

// The scratch the last emu_guided call's launch asked for (guided_scratch_bytes).
int64_t emu_scratch_bytes() { return static_cast<int64_t>(last_scratch_bytes); }

// Bytes the last emu_guided call loaded, by load width: out[0..4] = 2, 4, 8, 16 bytes, other.
void emu_load_widths(int64_t* out) {
  for (int i = 0; i < 5; ++i) out[i] = emu::loaded_by_width[i].load();
}

// Probes of the emulation's warp checks (each aborts the process with a message; tests run them
// in a subprocess). kind 0: lane 5 shuffles with a mask that excludes it; 1: only the lower half
// of warp 0 shuffles (a divergent shuffle); 2: lanes disagree on the mask.
void emu_warp_probe(int kind) {
  emu::launch(dim3(1), [&] {
    const int lane = static_cast<int>(threadIdx.x & 31u);
    if (threadIdx.x >= 32) return;
    if (kind == 0) {
      __shfl_xor_sync(lane == 5 ? 0x1u : 0xFFFFFFFFu, 1.0f, 1);
    } else if (kind == 1) {
      if (lane < 16) __shfl_xor_sync(0xFFFFFFFFu, 1.0f, 1);
    } else {
      __shfl_xor_sync(lane < 16 ? 0x0000FFFFu : 0xFFFFFFFFu, 1.0f, 1);
    }
  });
}

// What a block finds in shared memory before writing it (out[block], 3 blocks): the emulation's
// garbage, different for every block (a kernel relying on zeroed or leftover shared memory fails).
__global__ void shared_probe_kernel(int32_t* out) {  // __global__: its block statics sit with the kernels'
  __shared__ int32_t word;
  if (threadIdx.x == 0) out[blockIdx.x] = word;
  __syncthreads();
  if (threadIdx.x == 0) word = 0;
}

void emu_shared_probe(int32_t* out) {
  emu::launch(dim3(3), [&] { shared_probe_kernel(out); });
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
