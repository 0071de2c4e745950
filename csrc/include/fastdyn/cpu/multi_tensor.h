// CPU multi-tensor plumbing: a list of tensors is cut into fixed-size chunks that the
// OpenMP threads share. Chunk boundaries do not depend on the thread count, and every
// reduction combines per-chunk partials in chunk order, so results are the same bits
// whatever OMP_NUM_THREADS is.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fastdyn {
namespace cpu {

// 32K elements: 128 KiB per fp32 stream, so the 4-7 streams of an optimizer update stay
// within the 1 MiB L2 of a core while a chunk is processed, and a 2-core split of 1,000
// 4K-element tensors still balances.
constexpr int64_t kChunkElems = int64_t(1) << 15;
// Below this many elements in all, one thread does everything: an OpenMP fork/join costs
// a few microseconds, more than the work.
constexpr int64_t kSerialBelow = int64_t(1) << 16;

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

struct ChunkPlan {
  std::vector<Chunk> chunks;
  std::vector<int64_t> first_chunk;  // size n+1: chunks of tensor t are [first_chunk[t], first_chunk[t+1])
  int64_t total_elems = 0;
};

inline ChunkPlan plan_chunks(at::TensorList ts, int64_t chunk_elems = kChunkElems) {
  ChunkPlan plan;
  plan.first_chunk.reserve(ts.size() + 1);
  for (size_t t = 0; t < ts.size(); ++t) {
    plan.first_chunk.push_back(static_cast<int64_t>(plan.chunks.size()));
    const int64_t n = ts[t].numel();
    plan.total_elems += n;
    for (int64_t b = 0; b < n; b += chunk_elems) {
      plan.chunks.push_back({static_cast<int64_t>(t), b, std::min(n, b + chunk_elems)});
    }
  }
  plan.first_chunk.push_back(static_cast<int64_t>(plan.chunks.size()));
  return plan;
}

// f(chunk, chunk_index) for every chunk, on all threads when there is enough work.
template <typename F>
void for_each_chunk(const ChunkPlan& plan, F&& f) {
  const int64_t n = static_cast<int64_t>(plan.chunks.size());
  if (plan.total_elems < kSerialBelow || n < 2) {
    for (int64_t i = 0; i < n; ++i) f(plan.chunks[i], i);
    return;
  }
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) f(plan.chunks[i], i);
  });
}

template <typename T>
inline T* ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// Reads a one-element CPU tensor (lr, step, grad_scale, found_inf): plain memory, no sync.
inline double scalar_value(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? *static_cast<const double*>(t.data_ptr())
                                        : static_cast<double>(*static_cast<const float*>(t.data_ptr()));
}

inline void set_scalar_value(const at::Tensor& t, double v) {
  if (t.scalar_type() == at::kDouble) {
    *static_cast<double*>(t.data_ptr()) = v;
  } else {
    *static_cast<float*>(t.data_ptr()) = static_cast<float>(v);
  }
}

}  // namespace cpu
}  // namespace fastdyn

namespace fastdyn {
namespace cpu {

// f(chunk, chunk_index) for chunks [begin, end) of the plan.
template <typename F>
void for_each_chunk_in(const ChunkPlan& plan, int64_t begin, int64_t end, F&& f) {
  int64_t elems = 0;
  for (int64_t i = begin; i < end && elems < kSerialBelow; ++i) {
    elems += plan.chunks[i].end - plan.chunks[i].begin;
  }
  if (elems < kSerialBelow || end - begin < 2) {
    for (int64_t i = begin; i < end; ++i) f(plan.chunks[i], i);
    return;
  }
  at::parallel_for(begin, end, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) f(plan.chunks[i], i);
  });
}

// Elements per batch of the two-phase schedule: 1M fp32 elements of 4 streams is 16 MiB,
// half the 32 MiB last-level cache measured on the development machine.
constexpr int64_t kBatchElems = int64_t(1) << 20;

// Two passes with a per-tensor reduction between them (LAMB, LARS). Whole tensors are
// grouped into batches of about kBatchElems; each batch runs phase_a on all its chunks,
// finish(first_tensor, end_tensor), then phase_b, so phase_b re-reads from cache what
// phase_a just read instead of going back to DRAM.
template <typename PhaseA, typename Finish, typename PhaseB>
void two_phase(const ChunkPlan& plan, PhaseA&& phase_a, Finish&& finish, PhaseB&& phase_b) {
  const int64_t n_tensors = static_cast<int64_t>(plan.first_chunk.size()) - 1;
  int64_t t0 = 0;
  while (t0 < n_tensors) {
    int64_t t1 = t0;
    int64_t elems = 0;
    while (t1 < n_tensors) {
      int64_t te = 0;
      for (int64_t c = plan.first_chunk[t1]; c < plan.first_chunk[t1 + 1]; ++c) {
        te += plan.chunks[c].end - plan.chunks[c].begin;
      }
      if (t1 > t0 && elems + te > kBatchElems) break;
      elems += te;
      ++t1;
    }
    const int64_t c0 = plan.first_chunk[t0], c1 = plan.first_chunk[t1];
    for_each_chunk_in(plan, c0, c1, phase_a);
    finish(t0, t1);
    for_each_chunk_in(plan, c0, c1, phase_b);
    t0 = t1;
  }
}

}  // namespace cpu
}  // namespace fastdyn
