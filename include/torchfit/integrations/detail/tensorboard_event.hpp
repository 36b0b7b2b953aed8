// SPDX-License-Identifier: MIT
// The TensorBoard messages torchfit writes (Event, Summary.Value for scalars, text and hparams), encoded with
// the field numbers of tensorboard's compat/proto and plugins/hparams .proto files.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "torchfit/integrations/detail/tfrecord.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail::tensorboard {

/// Tag prefix and plugin of the HParams dashboard.
inline constexpr std::string_view hparams_plugin = "hparams";
inline constexpr std::string_view session_start_tag = "_hparams_/session_start_info";
inline constexpr std::string_view session_end_tag = "_hparams_/session_end_info";

/// The first event of every file: Event{wall_time, file_version = "brain.Event:2"}. With version 2
/// TensorBoard keeps points whose steps go backwards instead of purging them as a restart.
inline std::string file_version_event(double wall_time) {
  return ProtoMessage().add_double(1, wall_time).add_bytes(3, "brain.Event:2").bytes();
}

/// Event{wall_time, step, summary}; step 0 is left out as proto3 does.
inline std::string summary_event(double wall_time, std::int64_t step, const ProtoMessage& summary) {
  ProtoMessage event;
  event.add_double(1, wall_time);
  if (step != 0) event.add_varint(2, static_cast<std::uint64_t>(step));
  return event.add_message(5, summary).bytes();
}

/// SummaryMetadata naming a plugin; empty `content` is left out (PluginData version 0 serialises to nothing).
inline ProtoMessage plugin_metadata(std::string_view plugin_name, std::string_view content = {}) {
  ProtoMessage plugin_data;
  plugin_data.add_bytes(1, plugin_name);
  if (!content.empty()) plugin_data.add_bytes(2, content);
  return ProtoMessage().add_message(1, plugin_data);
}

/// Summary.Value{tag, simple_value}: the old-style float32 scalar torch's add_scalar writes, which
/// TensorBoard migrates to its scalars plugin.
inline ProtoMessage scalar_value(std::string_view tag, float value) {
  return ProtoMessage().add_bytes(1, tag).add_float(2, value);
}

/// Summary.Value for the text plugin: a DT_STRING tensor of shape [1] holding `text` (Markdown).
inline ProtoMessage text_value(std::string_view tag, std::string_view text) {
  const auto shape = ProtoMessage().add_message(2, ProtoMessage().add_varint(1, 1));  // dim {size: 1}
  const auto tensor = ProtoMessage().add_varint(1, 7).add_message(2, shape).add_bytes(8, text);  // DT_STRING
  return ProtoMessage().add_bytes(1, tag).add_message(9, plugin_metadata("text")).add_message(8, tensor);
}

/// Summary.Value carrying HParamsPluginData (version 0) whose oneof field `field` is `data`, with the empty
/// DT_FLOAT tensor of shape [0] tensorboard's own writer puts in hparams values.
inline ProtoMessage hparams_value(std::string_view tag, std::uint32_t field, const ProtoMessage& data) {
  const auto plugin_data = ProtoMessage().add_message(field, data);
  const auto null_tensor = ProtoMessage().add_varint(1, 1).add_message(2, ProtoMessage().add_message(2, {}));
  return ProtoMessage()
      .add_bytes(1, tag)
      .add_message(9, plugin_metadata(hparams_plugin, plugin_data.bytes()))
      .add_message(8, null_tensor);
}

/// google.protobuf.Value for one hyper-parameter: numbers as number_value, strings as string_value, booleans
/// as bool_value, arrays and objects as their compact JSON text.
inline ProtoMessage hparam_protobuf_value(const json& value) {
  if (value.is_boolean()) return ProtoMessage().add_varint(4, value.get<bool>() ? 1 : 0);
  if (value.is_number()) return ProtoMessage().add_double(2, value.get<double>());
  return ProtoMessage().add_bytes(3, value.is_string() ? value.get_ref<const std::string&>() : value.dump());
}

/// `_hparams_/session_start_info`: SessionStartInfo{hparams, start_time_secs} for the HParams dashboard, one
/// row per run directory. Null members are left out (the dashboard shows an empty cell).
inline ProtoMessage session_start_value(const json& hparams, double start_time) {
  ProtoMessage info;
  for (auto it = hparams.begin(); it != hparams.end(); ++it) {
    if (it.value().is_null()) continue;
    info.add_message(1,
                     ProtoMessage().add_bytes(1, it.key()).add_message(2, hparam_protobuf_value(it.value())));
  }
  info.add_double(5, start_time);
  return hparams_value(session_start_tag, 3, info);
}

/// `_hparams_/session_end_info`: SessionEndInfo{status = SUCCESS, end_time_secs}.
inline ProtoMessage session_end_value(double end_time) {
  return hparams_value(session_end_tag, 4, ProtoMessage().add_varint(1, 1).add_double(2, end_time));
}

}  // namespace torchfit::detail::tensorboard
