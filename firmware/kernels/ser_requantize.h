/* Requantization of an int32 accumulator, bit-exact with TFLM's MultiplyByQuantizedMultiplier
 * (the double-rounding variant TFLM builds by default): a saturating rounding doubling high
 * multiply, then a rounding (half away from zero) right shift. */
#ifndef SER_REQUANTIZE_H_
#define SER_REQUANTIZE_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* shift > 0 shifts left before the multiply, shift < 0 right after it (TFLM's convention). */
static inline int32_t ser_requantize(int32_t acc, int32_t multiplier, int32_t shift) {
  const int32_t left = shift > 0 ? shift : 0;
  const int32_t right = shift > 0 ? 0 : -shift;
  /* TFLM multiplies by (1 << left) with wrap-around; an unsigned shift does the same without UB. */
  const int32_t x = (int32_t)((uint32_t)acc << left);
  /* gemmlowp's nudge-and-truncate equals floor((x * m + 2^30) / 2^31) for either sign of x * m;
   * the saturating case (x == m == INT32_MIN) cannot occur as TFLM's multipliers are >= 0. */
  const int32_t high = (int32_t)(((int64_t)x * multiplier + (1LL << 30)) >> 31);
  /* gemmlowp's RoundingDivideByPOT, as written there: exact for every int32. */
  const int32_t mask = (int32_t)((1u << right) - 1u);
  const int32_t remainder = high & mask;
  const int32_t threshold = (mask >> 1) - (high >> 31);
  return (high >> right) + (remainder > threshold ? 1 : 0);
}

/* The same in 8 instructions for a right shift (shift <= -1; right = -shift, half = 2^(right-1)) of
 * a value below 2^30 in magnitude: then the rounding sum cannot overflow, and gemmlowp's
 * remainder test is the same as adding the sign before shifting. Callers check the bound. */
static inline int32_t ser_requantize_right(int32_t acc, int32_t multiplier, int32_t right, int32_t half) {
  const int32_t high = (int32_t)(((int64_t)acc * multiplier + (1LL << 30)) >> 31);
  return (high + half + (high >> 31)) >> right;
}

/* ser_requantize_right with the output offset folded in: fold = half + (offset << right), for
 * |acc| < 2^30 and right <= 22 (then no sum overflows; callers check). The high multiply is
 * SMMULR of 2 * acc: (2 * acc * m + 2^31) >> 32 is (acc * m + 2^30) >> 31 exactly. */
static inline int32_t ser_requantize_fast(int32_t acc, int32_t multiplier, int32_t right, int32_t fold) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  int32_t high;
  __asm__("smmulr %0, %1, %2" : "=r"(high) : "r"(acc * 2), "r"(multiplier));
#else
  const int32_t high = (int32_t)(((int64_t)acc * multiplier + (1LL << 30)) >> 31);
#endif
  return (high + fold + (high >> 31)) >> right;
}

#ifdef __cplusplus
}
#endif

#endif /* SER_REQUANTIZE_H_ */
