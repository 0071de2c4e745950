// CUDA multi-tensor apply: one launch walks many tensors.
//
// The host packs up to kMaxTensors tensors (their addresses, sizes and a prefix sum of their
// chunk counts) into a struct passed as a kernel argument, so a launch needs no device
// memory of its own and is CUDA-graph safe. A fixed grid of blocks strides over the chunks;
// a block finds its tensor by binary search in the prefix sum. Element indices are 64-bit.
// Reductions write one partial per chunk (in a buffer indexed by the global chunk number)
// and are combined in a fixed order by separate small kernels: same bits every run, no
// float atomics.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

namespace fastdyn {
namespace cuda {

constexpr int kBlockSize = 256;
constexpr int kILP = 4;
constexpr int64_t kChunkElems = 65536;

// CUDA 12.1 lifted the kernel-argument limit from 4 KiB to 32 KiB (sm_70 and newer), so
// one launch can carry hundreds of tensors; 512 bytes are left for the op's own arguments.
#if defined(CUDA_VERSION) && CUDA_VERSION >= 12010
constexpr int kMaxArgBytes = 32000;
#else
constexpr int kMaxArgBytes = 4000;
#endif

template <int Depth>
struct TensorListMeta {
  static constexpr int kMaxTensors = (kMaxArgBytes - 512) / (8 * Depth + 8 + 4 + 4);
  void* addr[Depth][kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t chunk_begin[kMaxTensors + 1];  // chunks of slot t: [chunk_begin[t], chunk_begin[t+1])
  int32_t tensor_id[kMaxTensors];        // index of slot t in the op's full lists
  int32_t n_tensors;
  int32_t n_chunks;
  int64_t chunk_offset;  // global number of this launch's first chunk
};

// Properties of a device, queried once per device (and per kernel for occupancy): a host
// query, no stream work, so it is fine under graph capture. A process may see GPUs of
// different models, whose SM counts and register files differ: nothing is shared between
// devices. Relaxed atomics: two threads racing on a first query store the same value.
constexpr int kMaxDevices = 64;

template <typename Query>
int cached_per_device(std::atomic<int> (&cache)[kMaxDevices], int device, Query&& query) {
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "fastdyn supports CUDA devices 0..",
              kMaxDevices - 1, ", got device ", device);
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    v = query();
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

inline int sm_count(int device) {
  static std::atomic<int> counts[kMaxDevices] = {};
  return cached_per_device(counts, device, [device] {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    return n;
  });
}

// Blocks per launch of a persistent kernel: as many as are resident at once on every SM
// (`per_sm`, from the kernel's registers), never more than there are chunks. A larger grid
// runs its extra blocks as a second wave after the first has done all its chunks: a fixed
// 4 blocks of 512 threads per SM, with 3 resident (40 registers), left a fourth of the
// blocks to a nearly empty wave (AdamW at 79% of copy bandwidth on an H100).
inline int grid_size(int n_chunks, int device, int per_sm) {
  const int cap = sm_count(device) * per_sm;
  return n_chunks < cap ? (n_chunks > 0 ? n_chunks : 1) : cap;
}

// Blocks of `kernel` resident per SM on `device` (cached per kernel and device).
template <auto Kernel>
int resident_blocks_per_sm(int device, int block_size) {
  static std::atomic<int> per_device[kMaxDevices] = {};
  return cached_per_device(per_device, device, [block_size] {
    int n = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, Kernel, block_size, 0));
    return n > 0 ? n : 1;
  });
}

inline int64_t count_chunks(at::TensorList list) {
  int64_t total = 0;
  for (const at::Tensor& t : list) total += (t.numel() + kChunkElems - 1) / kChunkElems;
  return total;
}

// Built for 32 KB arguments, the driver must take them too: a CUDA 12.0 driver (which runs
// 12.x builds through minor-version compatibility) fails every launch with a generic error.
inline void check_driver_takes_kernel_arguments() {
#if defined(CUDA_VERSION) && CUDA_VERSION >= 12010
  static const int driver = [] {
    int v = 0;
    C10_CUDA_CHECK(cudaDriverGetVersion(&v));
    return v;
  }();
  TORCH_CHECK(driver >= 12010, "fastdyn's CUDA kernels were built to take up to 32 KB of "
              "arguments, which needs an NVIDIA driver for CUDA 12.1 or newer; this driver "
              "supports CUDA ", driver / 1000, ".", (driver % 1000) / 10,
              ". Update the driver, or use the Triton backend (FASTDYN_BACKEND=triton)");
#endif
}

// Cuts `lists` (Depth lists of equal length, list 0 sets the sizes; an empty list gives
// null addresses) into launches; calls launch(meta) for each. `ids` (optional) maps list
// positions to the op's own tensor indices; chunk numbers start at `chunk_base`.
template <int Depth, typename Launch>
void for_each_batch(const std::array<at::TensorList, Depth>& lists, Launch&& launch,
                    const std::vector<int64_t>* ids = nullptr, int64_t chunk_base = 0) {
  using Meta = TensorListMeta<Depth>;
  Meta meta;
  meta.n_tensors = 0;
  meta.n_chunks = 0;
  meta.chunk_offset = chunk_base;
  meta.chunk_begin[0] = 0;
  int64_t global_chunks = chunk_base;
  const int64_t n = static_cast<int64_t>(lists[0].size());
  // here, not in launch_apply: the per-tensor kernels take a TensorListMeta too, and a
  // batch of empty tensors launches only them
  if (n > 0) check_driver_takes_kernel_arguments();
  for (int64_t t = 0; t < n; ++t) {
    const int64_t numel = lists[0][t].numel();
    const int64_t chunks = (numel + kChunkElems - 1) / kChunkElems;
    if (meta.n_tensors == Meta::kMaxTensors || int64_t(meta.n_chunks) + chunks > (int64_t(1) << 30)) {
      launch(meta);
      meta.n_tensors = 0;
      meta.n_chunks = 0;
      meta.chunk_offset = global_chunks;
    }
    const int slot = meta.n_tensors++;
    for (int d = 0; d < Depth; ++d) {
      meta.addr[d][slot] = lists[d].empty() ? nullptr : lists[d][t].data_ptr();
    }
    meta.numel[slot] = numel;
    meta.tensor_id[slot] = static_cast<int32_t>(ids ? (*ids)[t] : t);
    meta.n_chunks += static_cast<int32_t>(chunks);
    meta.chunk_begin[slot + 1] = meta.n_chunks;
    global_chunks += chunks;
  }
  if (meta.n_tensors > 0) launch(meta);
}

template <int Depth>
__device__ __forceinline__ int find_slot(const TensorListMeta<Depth>& meta, int chunk) {
  int lo = 0, hi = meta.n_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (meta.chunk_begin[mid] <= chunk) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// The chunk a block works on: slot, element range inside the tensor, global chunk number.
struct ChunkRef {
  int slot;
  int64_t begin;
  int64_t end;
  int64_t global;
};

// Runs op(meta, chunk) for every chunk of the launch. op.skip() (found_inf set) ends the
// block before it touches memory.
template <int Depth, typename Op>
__global__ void __launch_bounds__(kBlockSize) apply_kernel(TensorListMeta<Depth> meta, Op op) {
  if (op.skip()) return;
  for (int c = blockIdx.x; c < meta.n_chunks; c += gridDim.x) {
    const int slot = find_slot(meta, c);
    const int64_t begin = int64_t(c - meta.chunk_begin[slot]) * kChunkElems;
    const int64_t end = begin + kChunkElems < meta.numel[slot] ? begin + kChunkElems : meta.numel[slot];
    op(meta, ChunkRef{slot, begin, end, meta.chunk_offset + c});
  }
}

template <int Depth, typename Op>
void launch_apply(const TensorListMeta<Depth>& meta, const Op& op) {
  if (meta.n_chunks == 0) return;
  const int device = c10::cuda::current_device();
  const int per_sm = resident_blocks_per_sm<apply_kernel<Depth, Op>>(device, kBlockSize);
  apply_kernel<Depth, Op><<<grid_size(meta.n_chunks, device, per_sm), kBlockSize, 0,
                            c10::cuda::getCurrentCUDAStream()>>>(meta, op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// For every element index i of [begin, end) owned by this thread: e = load(i), then
// apply(i, e), kILP elements at a time (coalesced: consecutive threads take consecutive
// elements). All kILP loads are issued before the first apply: an element-at-a-time loop
// kept one element's loads in flight per thread, because the compiler may not move a load
// above a store to a pointer that could alias it (seen in the sm_90a SASS of the AdamW
// kernel: 5 LDG, compute, 4 STG, then the next element's LDG).
template <typename Load, typename Apply>
__device__ __forceinline__ void for_chunk_elements(int64_t begin, int64_t end, Load&& load, Apply&& apply) {
  using Elem = decltype(load(begin));
  constexpr int64_t kTile = int64_t(kBlockSize) * kILP;
  int64_t base = begin;
  for (; base + kTile <= end; base += kTile) {  // whole tiles: no bounds checks
    Elem e[kILP];
#pragma unroll
    for (int k = 0; k < kILP; ++k) e[k] = load(base + threadIdx.x + int64_t(k) * kBlockSize);
#pragma unroll
    for (int k = 0; k < kILP; ++k) apply(base + threadIdx.x + int64_t(k) * kBlockSize, e[k]);
  }
  if (base < end) {  // the chunk's last, partial tile
    Elem e[kILP];
#pragma unroll
    for (int k = 0; k < kILP; ++k) {
      const int64_t i = base + threadIdx.x + int64_t(k) * kBlockSize;
      if (i < end) e[k] = load(i);
    }
#pragma unroll
    for (int k = 0; k < kILP; ++k) {
      const int64_t i = base + threadIdx.x + int64_t(k) * kBlockSize;
      if (i < end) apply(i, e[k]);
    }
  }
}

// Block-wide reduction with a fixed shape (warp shuffles, then one warp): the same bits
// every run. The result is valid in thread 0. `shared` holds 32 values.
template <typename T, typename Combine>
__device__ __forceinline__ T block_reduce(T v, Combine combine, T* shared) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = combine(v, __shfl_down_sync(0xffffffffu, v, offset));
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < n_warps ? shared[lane] : T(0);
  if (warp == 0) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = combine(v, __shfl_down_sync(0xffffffffu, v, offset));
  }
  return v;
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

// Reads a one-element float32/float64 device scalar (as double: a float64 lr must keep its
// precision for float64 params).
__device__ __forceinline__ double read_scalar(const void* p, bool is_double) {
  return is_double ? *static_cast<const double*>(p) : static_cast<double>(*static_cast<const float*>(p));
}

// A device scalar argument: address and width, passed by value into kernels.
struct ScalarRef {
  const void* ptr = nullptr;
  bool is_double = false;
  __device__ __forceinline__ bool present() const { return ptr != nullptr; }
  __device__ __forceinline__ double get() const { return read_scalar(ptr, is_double); }
};

inline ScalarRef scalar_ref(const at::Tensor& t) {
  return ScalarRef{t.data_ptr(), t.scalar_type() == at::kDouble};
}
inline ScalarRef scalar_ref(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? scalar_ref(*t) : ScalarRef{};
}

}  // namespace cuda
}  // namespace fastdyn
