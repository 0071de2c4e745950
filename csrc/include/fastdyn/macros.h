// Portability macros shared by the CPU (g++) and CUDA (nvcc) builds of the same headers.
#pragma once

// Always inlined: the CPU loops only vectorize when the per-element math is inlined into
// them (measured: GCC 12 left adam_update as a call, and the AdamW loop ran 5x slower).
#if defined(__CUDACC__)
#define FASTDYN_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FASTDYN_HD inline __attribute__((always_inline))
#else
#define FASTDYN_HD inline
#endif

#include <cmath>

namespace fastdyn {
namespace math {

// One spelling of sqrt/pow that compiles for host and device: on the device the CUDA
// intrinsics, on the host <cmath>. Kept here so the math headers never branch on the target.
FASTDYN_HD float fsqrt(float x) {
#if defined(__CUDA_ARCH__)
  return ::sqrtf(x);
#else
  return std::sqrt(x);
#endif
}
FASTDYN_HD double fsqrt(double x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}
FASTDYN_HD float fpow(float b, float e) {
#if defined(__CUDA_ARCH__)
  return ::powf(b, e);
#else
  return std::pow(b, e);
#endif
}
FASTDYN_HD double fpow(double b, double e) {
#if defined(__CUDA_ARCH__)
  return ::pow(b, e);
#else
  return std::pow(b, e);
#endif
}

// a * b + c. The compilers fuse no multiply-add of their own (g++ -ffp-contract=off, nvcc
// --fmad=false, Triton enable_fp_fusion=False): GCC had fused one in a loop and not in its
// track_stats twin, and a step with statistics came out 1 ulp off the same step without. The
// fused ones are written (here; tl.fma in Triton), one rounding wherever the target has an FMA
// unit (every GPU; CPUs built with FMA), else two.
FASTDYN_HD float fmadd(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#elif defined(__FMA__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}
FASTDYN_HD double fmadd(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#elif defined(__FMA__)
  return __builtin_fma(a, b, c);
#else
  return a * b + c;
#endif
}

// max that propagates NaN from either side (fmax drops NaN, which would hide a NaN
// gradient in an inf-norm or an amsgrad max).
// (Bitwise |, not ||: a short-circuit is control flow, which stops loop vectorization.)
template <typename T>
FASTDYN_HD T nan_max(T a, T b) {
  return ((a != a) | (a > b)) ? a : b;
}

// |x|, branch-free; + 0 turns -0.0 into +0.0 (the inf norm of -0.0 is 0, as torch's)
template <typename T>
FASTDYN_HD T fabs_(T x) {
  return x < T(0) ? -x : x + T(0);
}

template <typename T>
FASTDYN_HD bool is_finite(T x) {
  // x - x is 0 for finite x and NaN for +-inf and NaN; avoids std::isfinite, which
  // -ffast-math style flags may fold away.
  return (x - x) == (x - x);
}

}  // namespace math
}  // namespace fastdyn
