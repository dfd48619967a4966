//===- MasterSplit.h - An fp32 master as a bf16 copy and a remainder -*- C++ -*-===//
//
// An fp32 master weight kept as two 16-bit halves: its bf16 copy (the value
// the forward reads) and the low 16 bits of its fp32 pattern. The split is
// lossless: joinMaster(splitMaster(p)) is p bit for bit, NaNs excepted,
// which stay NaN. The copy is p rounded to the nearest bf16 with ties away
// from zero: the high half, one step up in magnitude when the low half is
// at least 0x8000, which the remainder's top bit then records so that the
// join can undo it. Round-to-nearest-even (a cast) differs only where the
// low half is exactly 0x8000 and the high half even: a tie, one element in
// 65536 of uniformly spread low halves. Transformer Engine's FusedAdam
// (`store_param_remainders`) keeps masters the same way.
//
// Host and device: AdamW on split masters (moert/kernels/Optimizer.cuh)
// and the runtime's unit test use the same two functions.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_MASTERSPLIT_H
#define MOERT_MASTERSPLIT_H

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define MOERT_SPLIT_HD __host__ __device__
#else
#define MOERT_SPLIT_HD
#endif

namespace moert {

/// hi = the bf16 copy's bits, lo = the low 16 bits of p's fp32 pattern.
MOERT_SPLIT_HD inline void splitMaster(float p, uint16_t &hi, uint16_t &lo) {
  uint32_t bits;
  memcpy(&bits, &p, 4);
  lo = static_cast<uint16_t>(bits & 0xffffu);
  hi = static_cast<uint16_t>(bits >> 16);
  if ((bits & 0x7fffffffu) > 0x7f800000u) // NaN: a quiet NaN copy
    hi |= 0x0040u;
  else if (lo & 0x8000u)
    ++hi; // one step up in magnitude; carries into the exponent as rounding
}

/// The fp32 master splitMaster split into hi and lo.
MOERT_SPLIT_HD inline float joinMaster(uint16_t hi, uint16_t lo) {
  uint32_t bits =
      ((static_cast<uint32_t>(hi) - ((lo & 0x8000u) ? 1u : 0u)) << 16) | lo;
  float p;
  memcpy(&p, &bits, 4);
  return p;
}

} // namespace moert

#undef MOERT_SPLIT_HD

#endif // MOERT_MASTERSPLIT_H
