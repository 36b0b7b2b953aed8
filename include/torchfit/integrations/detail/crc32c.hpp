// SPDX-License-Identifier: MIT
// CRC-32C (Castagnoli), the checksum of TFRecord files, and TensorFlow's "masked" form of it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace torchfit::detail {

// Byte-at-a-time table for the reflected polynomial 0x82F63B78.
inline constexpr std::array<std::uint32_t, 256> crc32c_table = [] {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1U) ? 0x82F63B78U : 0U);
    table[i] = crc;
  }
  return table;
}();

/// CRC-32C of `data` (init and final xor 0xFFFFFFFF; CRC-32C("123456789") = 0xE3069283). Not zlib's CRC-32.
inline std::uint32_t crc32c(std::string_view data) {
  std::uint32_t crc = 0xFFFFFFFFU;
  for (const char c : data) crc = crc32c_table[(crc ^ static_cast<unsigned char>(c)) & 0xFFU] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFU;
}

/// TensorFlow's masked CRC-32C as stored in TFRecord files: rotate right by 15, then add 0xA282EAD8 (mod
/// 2^32), so that a CRC computed over data that itself holds CRCs does not degenerate.
inline std::uint32_t masked_crc32c(std::string_view data) {
  const std::uint32_t crc = crc32c(data);
  return ((crc >> 15) | (crc << 17)) + 0xA282EAD8U;
}

}  // namespace torchfit::detail
