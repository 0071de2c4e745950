// The assertions of the C++ tests (not named CHECK: c10 defines that): report the failing
// line and keep going; main() returns the failure count.
#pragma once
#include <cmath>
#include <cstdio>

static int failures = 0;

#define EXPECT(cond)                                                                            \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::printf("%s:%d: failed: %s\n", __FILE__, __LINE__, #cond);                          \
      ++failures;                                                                              \
    }                                                                                          \
  } while (0)

#define EXPECT_NEAR(a, b, tol)                                                                  \
  do {                                                                                         \
    const double _a = (a), _b = (b);                                                           \
    if (!(std::fabs(_a - _b) <= (tol) * (1.0 + std::fabs(_b)))) {                              \
      std::printf("%s:%d: %s = %.17g, expected %.17g\n", __FILE__, __LINE__, #a, _a, _b);     \
      ++failures;                                                                              \
    }                                                                                          \
  } while (0)
