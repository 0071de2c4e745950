// fp16 tensors staged through fp32 blocks. Converting inside the update loops bound the
// fp16 CPU steps (AdamW 0.24x torch's fused on GPT-2 small): GCC cannot vectorize c10's
// scalar F16C conversion and spends ~10 instructions on each branch-free one. Here each
// fp16 array of a block is converted once with F16C's 8-wide vcvtph2ps/vcvtps2ph and the
// fp32 kernel runs on the block (AdamW 0.63x, SGD 0.60x). The rounding is the same (to
// nearest even), so the results are the same bits.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "fastdyn/cpu/convert.h"

namespace fastdyn {
namespace cpu {

// Elements per staged block: 8 KiB per fp32 array, so the 5-7 arrays of a step stay in L1/L2.
constexpr int64_t kStageElems = 2048;

// fp16 only: bf16 converts with a shift and a rounding add that vectorize inside the loops,
// and staging it measured slower (GPT-2 small AdamW 0.82x -> 0.67x torch fused).
template <typename T>
constexpr bool kStaged = std::is_same_v<T, c10::Half>;

template <typename T>
inline void to_float(const T* __restrict__ src, float* __restrict__ dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  if constexpr (std::is_same_v<T, c10::Half>) {
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) dst[j] = load<float>(src[j]);
}

template <typename T>
inline void from_float(const float* __restrict__ src, T* __restrict__ dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  if constexpr (std::is_same_v<T, c10::Half>) {
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
    }
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) dst[j] = store<T>(src[j]);
}

// The fp32 view of elements [offset, offset + len) of `data`: the data itself when it is
// fp32 (or absent), else `scratch`, filled from it when `read`.
template <typename T>
inline auto staged(T* data, float* scratch, int64_t offset, int64_t len, bool read) {
  using F = std::conditional_t<std::is_const_v<T>, const float, float>;
  if constexpr (kStaged<std::remove_const_t<T>>) {
    if (data != nullptr && read) to_float(data + offset, scratch, len);
    return static_cast<F*>(data ? scratch : nullptr);
  } else {
    return static_cast<F*>(data ? data + offset : nullptr);
  }
}

// Writes a staged block back (nothing to do for fp32 data, which was updated in place).
template <typename T>
inline void unstage(const float* block, T* data, int64_t offset, int64_t len) {
  if constexpr (kStaged<T>) {
    if (data != nullptr) from_float(block, data + offset, len);
  }
}

// block(offset, len) for [0, n) in blocks of kStageElems.
template <typename Block>
inline void for_stage_blocks(int64_t n, Block&& block) {
  for (int64_t offset = 0; offset < n; offset += kStageElems) {
    block(offset, std::min(kStageElems, n - offset));
  }
}

// block(offset, len, block_stats) for [0, n) in blocks of kStageElems; with `stats`, the
// blocks' sums (block_stats is null without) add up into *stats.
template <typename Block>
inline void for_stage_blocks(int64_t n, std::array<double, 3>* stats, Block&& block) {
  std::array<double, 3> sums = {0.0, 0.0, 0.0}, block_sums = {0.0, 0.0, 0.0};
  for_stage_blocks(n, [&](int64_t offset, int64_t len) {
    block(offset, len, stats ? &block_sums : nullptr);
    if (stats) {
      for (int k = 0; k < 3; ++k) sums[k] += block_sums[k];
    }
  });
  if (stats) *stats = sums;
}

}  // namespace cpu
}  // namespace fastdyn
