//===- Hmac.h - HMAC-SHA-256 for the rendezvous -----------------*- C++ -*-===//
//
// SHA-256 (FIPS 180-4) and HMAC (RFC 2104) over it: the rendezvous proves
// that a rank knows the job's token by answering rank 0's random challenge
// with HMAC-SHA-256(token, challenge || rank || world size), so the token
// itself never travels. Small and dependency-free, for that one use.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_HMAC_H
#define MOERT_HMAC_H

#include <array>
#include <cstdint>
#include <string_view>

namespace moert {

using Sha256Digest = std::array<uint8_t, 32>;

/// SHA-256 of `data`.
Sha256Digest sha256(std::string_view data);

/// HMAC-SHA-256 of `message` under `key`.
Sha256Digest hmacSha256(std::string_view key, std::string_view message);

} // namespace moert

#endif // MOERT_HMAC_H
