// CUDA kernel of tita::decode_advance: a decode step's bookkeeping in one launch (one block: the
// batch is small, and one block makes the all-finished flag a block-wide AND with no atomics).
#include <cuda_runtime.h>

#include "launch.h"

namespace tita::cuda {
namespace {

constexpr int kAdvanceThreads = 256;

__global__ void __launch_bounds__(kAdvanceThreads) decode_advance_kernel(AdvanceArgs a) {
  int every = 1;
  for (int64_t b = threadIdx.x; b < a.batch; b += blockDim.x) {
    const bool was = a.finished[b];
    const int64_t token = was ? a.pad_id : a.sampled[b];
    bool stop = was || token < 0;
    for (int64_t s = 0; s < a.num_stops && !stop; ++s) stop = a.stop_ids[s] == token;
    a.record[b] = token;
    a.feed[b] = token < 0 ? a.pad_id : token;
    a.finished_after[b] = stop;
    every &= stop ? 1 : 0;
  }
  every = __syncthreads_and(every);
  if (threadIdx.x == 0) *a.all_finished = every != 0;
}

}  // namespace

cudaError_t launch_decode_advance(const AdvanceArgs& args, cudaStream_t stream) {
  if (args.batch < 0 || args.num_stops < 0 || args.pad_id < 0) return cudaErrorInvalidValue;
  if (args.all_finished == nullptr) return cudaErrorInvalidValue;
  decode_advance_kernel<<<1, kAdvanceThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace tita::cuda
