// SPDX-License-Identifier: MIT
// TFRecord framing and the few protocol-buffer encodings TensorBoard event files need, written by hand so
// that no protobuf library is required.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "torchfit/integrations/detail/crc32c.hpp"

namespace torchfit::detail {

/// Appends `value` as `bytes` little-endian bytes (TFRecord and protobuf fixed-width fields are
/// little-endian).
inline void append_little_endian(std::string& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((value >> (8 * i)) & 0xFFU);
}

/// One TFRecord: payload length (uint64), masked CRC-32C of those 8 bytes, the payload, masked CRC-32C of it.
inline std::string tfrecord(std::string_view payload) {
  std::string out;
  out.reserve(payload.size() + 16);
  append_little_endian(out, payload.size(), 8);
  append_little_endian(out, masked_crc32c(out), 4);
  out.append(payload);
  append_little_endian(out, masked_crc32c(payload), 4);
  return out;
}

/// Builds one serialized protocol-buffer message field by field. Fields holding their proto3 default are
/// still written when added; callers leave out the ones proto3 would omit.
class ProtoMessage {
 public:
  /// A varint field (int32, int64, uint64, bool, enum).
  ProtoMessage& add_varint(std::uint32_t field, std::uint64_t value) {
    append_key(field, 0);
    append_varint(value);
    return *this;
  }
  /// A `double` field (wire type fixed64).
  ProtoMessage& add_double(std::uint32_t field, double value) {
    return add_fixed<std::uint64_t>(field, value, 1);
  }
  /// A `float` field (wire type fixed32).
  ProtoMessage& add_float(std::uint32_t field, float value) {
    return add_fixed<std::uint32_t>(field, value, 5);
  }
  /// A `string` or `bytes` field.
  ProtoMessage& add_bytes(std::uint32_t field, std::string_view value) {
    append_key(field, 2);
    append_varint(value.size());
    bytes_.append(value);
    return *this;
  }
  /// An embedded message field.
  ProtoMessage& add_message(std::uint32_t field, const ProtoMessage& message) {
    return add_bytes(field, message.bytes_);
  }

  /// The serialized message.
  const std::string& bytes() const { return bytes_; }

 private:
  void append_key(std::uint32_t field, std::uint32_t wire_type) {
    append_varint((std::uint64_t{field} << 3) | wire_type);
  }
  void append_varint(std::uint64_t value) {
    while (value >= 0x80) {
      bytes_ += static_cast<char>((value & 0x7FU) | 0x80U);
      value >>= 7;
    }
    bytes_ += static_cast<char>(value);
  }
  // IEEE-754 value as its bit pattern, little-endian (`Bits` is the unsigned integer of the same size).
  template <typename Bits, typename Float>
  ProtoMessage& add_fixed(std::uint32_t field, Float value, std::uint32_t wire_type) {
    static_assert(sizeof(Bits) == sizeof(Float));
    Bits bits = 0;
    std::memcpy(&bits, &value, sizeof bits);
    append_key(field, wire_type);
    append_little_endian(bytes_, bits, sizeof bits);
    return *this;
  }

  std::string bytes_;
};

}  // namespace torchfit::detail
