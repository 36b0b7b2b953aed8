// SPDX-License-Identifier: MIT
// Trackio's local storage: where its project databases live, its schema, its value encoding, and one
// connection to a project database with Trackio's cross-process lock.
#pragma once

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "torchfit/detail/system.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail {

/// huggingface_hub's HF_HOME: `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
inline std::filesystem::path hf_home() {
  if (const auto home = env_string("HF_HOME")) return expand_user(*home);
  return std::filesystem::path(expand_user(env_string("XDG_CACHE_HOME").value_or("~/.cache"))) /
         "huggingface";
}

/// Trackio's directory: `$TRACKIO_DIR`, else `<HF_HOME>/trackio`.
inline std::filesystem::path trackio_dir() {
  if (const auto dir = env_string("TRACKIO_DIR")) return *dir;
  return hf_home() / "trackio";
}

/// Trackio's canonical_project_name: only `[A-Za-z0-9_-]` kept; `default` when nothing is left.
inline std::string trackio_canonical_project(const std::string& project) {
  std::string out;
  for (const char c : project)
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_')
      out += c;
  return out.empty() ? "default" : out;
}

/// Trackio's serialize_values: NaN and infinities become the strings "NaN", "Infinity", "-Infinity" (its
/// reader, orjson, rejects the bare tokens).
inline json trackio_serialize(const json& value) {
  if (value.is_number_float()) {
    const double v = value.get<double>();
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  }
  if (!value.is_structured()) return value;
  json out = value.is_object() ? json::object() : json::array();
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (value.is_object())
      out[it.key()] = trackio_serialize(it.value());
    else
      out.push_back(trackio_serialize(it.value()));
  }
  return out;
}

/// The tables and indexes Trackio's init_db creates (the same statements, so a later Trackio finds nothing to
/// do).
inline constexpr const char* trackio_schema[] = {
    "CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, "
    "timestamp TEXT "
    "NOT NULL, run_name TEXT NOT NULL, step INTEGER NOT NULL, metrics TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS configs (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, "
    "run_name TEXT "
    "NOT NULL, config TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE(run_id))",
    "CREATE TABLE IF NOT EXISTS system_metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, "
    "timestamp TEXT NOT NULL, run_name TEXT NOT NULL, metrics TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS traces (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, timestamp TEXT NOT NULL, "
    "run_name "
    "TEXT NOT NULL, step INTEGER NOT NULL, key TEXT NOT NULL, trace_index INTEGER, messages TEXT NOT NULL, "
    "metadata "
    "TEXT NOT NULL, search_text TEXT NOT NULL, log_id TEXT, space_id TEXT)",
    "CREATE TABLE IF NOT EXISTS project_metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pending_uploads (id INTEGER PRIMARY KEY AUTOINCREMENT, space_id TEXT NOT "
    "NULL, run_id "
    "TEXT, run_name TEXT, step INTEGER, file_path TEXT NOT NULL, relative_path TEXT, created_at TEXT NOT "
    "NULL)",
    "CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, "
    "timestamp TEXT "
    "NOT NULL, run_name TEXT NOT NULL, title TEXT NOT NULL, text TEXT, level TEXT NOT NULL DEFAULT 'warn', "
    "step "
    "INTEGER, alert_id TEXT)",
    "CREATE TABLE IF NOT EXISTS artifacts (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, "
    "type TEXT "
    "NOT NULL, description TEXT, created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS artifact_versions (id INTEGER PRIMARY KEY AUTOINCREMENT, artifact_id INTEGER "
    "NOT NULL "
    "REFERENCES artifacts(id), version INTEGER NOT NULL, manifest_digest TEXT NOT NULL, manifest TEXT NOT "
    "NULL, "
    "metadata TEXT, size_bytes INTEGER NOT NULL, producer_run_id TEXT, producer_run_name TEXT, created_at "
    "TEXT NOT "
    "NULL, UNIQUE(artifact_id, version), UNIQUE(artifact_id, manifest_digest))",
    "CREATE TABLE IF NOT EXISTS artifact_aliases (artifact_id INTEGER NOT NULL REFERENCES artifacts(id), "
    "alias TEXT "
    "NOT NULL, artifact_version_id INTEGER NOT NULL REFERENCES artifact_versions(id), PRIMARY KEY "
    "(artifact_id, "
    "alias))",
    "CREATE TABLE IF NOT EXISTS run_artifact_links (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, "
    "run_name TEXT, "
    "artifact_version_id INTEGER NOT NULL REFERENCES artifact_versions(id), direction TEXT NOT NULL "
    "CHECK(direction IN ('input', 'output')), created_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS idx_run_artifact_links_run ON run_artifact_links(run_id, run_name)",
    "CREATE INDEX IF NOT EXISTS idx_run_artifact_links_name ON run_artifact_links(run_name, run_id)",
    "CREATE INDEX IF NOT EXISTS idx_run_artifact_links_version ON run_artifact_links(artifact_version_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_run_artifact_links_unique ON run_artifact_links(run_id, "
    "artifact_version_id, direction)",
    "ALTER TABLE pending_uploads ADD COLUMN kind TEXT NOT NULL DEFAULT 'media'",
    "ALTER TABLE pending_uploads ADD COLUMN digest TEXT",
    "CREATE INDEX IF NOT EXISTS idx_pending_uploads_kind ON pending_uploads(kind)",
    "CREATE INDEX IF NOT EXISTS idx_metrics_run_step ON metrics(run_id, step)",
    "CREATE INDEX IF NOT EXISTS idx_metrics_run_timestamp ON metrics(run_id, timestamp)",
    "CREATE INDEX IF NOT EXISTS idx_configs_run_name ON configs(run_name)",
    "CREATE INDEX IF NOT EXISTS idx_system_metrics_run_timestamp ON system_metrics(run_id, timestamp)",
    "CREATE INDEX IF NOT EXISTS idx_traces_run_step ON traces(run_id, step)",
    "CREATE INDEX IF NOT EXISTS idx_traces_run_timestamp ON traces(run_id, timestamp)",
    "CREATE INDEX IF NOT EXISTS idx_traces_search ON traces(search_text)",
    "CREATE INDEX IF NOT EXISTS idx_alerts_run ON alerts(run_id)",
    "CREATE INDEX IF NOT EXISTS idx_alerts_timestamp ON alerts(timestamp)",
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_alerts_alert_id ON alerts(alert_id) WHERE alert_id IS NOT NULL",
    "ALTER TABLE metrics ADD COLUMN log_id TEXT",
    "ALTER TABLE metrics ADD COLUMN space_id TEXT",
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_metrics_log_id ON metrics(log_id) WHERE log_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS idx_metrics_pending ON metrics(space_id) WHERE space_id IS NOT NULL",
    "ALTER TABLE system_metrics ADD COLUMN log_id TEXT",
    "ALTER TABLE system_metrics ADD COLUMN space_id TEXT",
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_system_metrics_log_id ON system_metrics(log_id) WHERE log_id IS "
    "NOT NULL",
    "CREATE INDEX IF NOT EXISTS idx_system_metrics_pending ON system_metrics(space_id) WHERE space_id IS NOT "
    "NULL",
};

/// One connection to a project database, with Trackio's cross-process lock file held around each write.
class TrackioDatabase {
 public:
  explicit TrackioDatabase(std::filesystem::path path) : path_(std::move(path)) {
    std::error_code ec;
    std::filesystem::create_directories(path_.parent_path(), ec);
    if (ec)
      throw Error(fmt::format("cannot create the Trackio directory {}: {}", path_.parent_path().string(),
                              ec.message()));
    sqlite3* db = nullptr;
    const int rc = sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
    db_.reset(db);
    if (rc != SQLITE_OK) fail("cannot open");
    sqlite3_busy_timeout(db, 30000);
    exec("PRAGMA journal_mode = WAL");
    exec("PRAGMA synchronous = NORMAL");
    Lock lock(path_);
    for (const char* statement : trackio_schema) {
      // Trackio adds later columns with ALTER TABLE and ignores "duplicate column" on databases that have
      // them.
      const bool alter = std::string_view(statement).rfind("ALTER", 0) == 0;
      if (sqlite3_exec(db_.get(), statement, nullptr, nullptr, nullptr) != SQLITE_OK && !alter)
        fail("cannot set up the schema of");
    }
  }

  /// A prepared statement with positional text/integer bindings.
  class Statement {
   public:
    Statement(TrackioDatabase& db, const char* sql) : db_(db) {
      sqlite3_stmt* s = nullptr;
      if (sqlite3_prepare_v2(db.db_.get(), sql, -1, &s, nullptr) != SQLITE_OK) db.fail("cannot query");
      stmt_.reset(s);
    }
    Statement& bind(int index, const std::string& text) {
      sqlite3_bind_text(stmt_.get(), index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
      return *this;
    }
    Statement& bind(int index, std::int64_t value) {
      sqlite3_bind_int64(stmt_.get(), index, value);
      return *this;
    }
    /// Steps once; true when a row is available.
    bool step() {
      const int rc = sqlite3_step(stmt_.get());
      if (rc != SQLITE_ROW && rc != SQLITE_DONE) db_.fail("cannot write to");
      return rc == SQLITE_ROW;
    }
    std::optional<std::string> text(int column) {
      const auto* t = sqlite3_column_text(stmt_.get(), column);
      if (t == nullptr) return std::nullopt;
      return std::string(reinterpret_cast<const char*>(t),
                         static_cast<std::size_t>(sqlite3_column_bytes(stmt_.get(), column)));
    }
    std::optional<std::int64_t> integer(int column) {
      if (sqlite3_column_type(stmt_.get(), column) == SQLITE_NULL) return std::nullopt;
      return sqlite3_column_int64(stmt_.get(), column);
    }

   private:
    struct Finalize {
      void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
    };
    TrackioDatabase& db_;
    std::unique_ptr<sqlite3_stmt, Finalize> stmt_;
  };

  /// Runs `write` in one transaction, holding the project's lock file.
  template <typename F>
  void transaction(F&& write) {
    Lock lock(path_);
    exec("BEGIN IMMEDIATE");
    try {
      write();
    } catch (...) {
      sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
    exec("COMMIT");
  }

  void exec(const char* sql) {
    if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail("cannot write to");
  }

  const std::filesystem::path& path() const { return path_; }

 private:
  // `<project>.lock` next to the database, locked with flock as Trackio's process lock does.
  class Lock {
   public:
    explicit Lock(std::filesystem::path db) {
      db.replace_extension(".lock");
      fd_ = ::open(db.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
      if (fd_ >= 0) ::flock(fd_, LOCK_EX);
    }
    ~Lock() {
      if (fd_ >= 0) ::close(fd_);  // closing releases the lock
    }
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;

   private:
    int fd_ = -1;
  };

  [[noreturn]] void fail(const char* what) {
    throw Error(fmt::format("{} the Trackio database {}: {}", what, path_.string(),
                            db_ ? sqlite3_errmsg(db_.get()) : "out of memory"));
  }

  struct Close {
    void operator()(sqlite3* db) const { sqlite3_close(db); }
  };
  std::filesystem::path path_;
  std::unique_ptr<sqlite3, Close> db_;
};

}  // namespace torchfit::detail
