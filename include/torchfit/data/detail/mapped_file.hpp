// SPDX-License-Identifier: MIT
// A file mapped into memory, and tensors that view it: the kernel pages in what a batch touches, so a dataset
// larger than memory trains.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/error.hpp"

namespace torchfit::detail {

/// A whole file mapped copy-on-write: tensors over it may be written to (the writes stay private to this
/// process and never reach the file). Empty files map to no memory. `sequential` tells the kernel the file is
/// read in order (read ahead); otherwise it is read at random, as a shuffled dataset is, and the kernel reads
/// only the pages touched (reading ahead around each random row would read far more than the batch).
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path, bool sequential = false) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(fmt::format("cannot open {}: {}", path.string(), std::strerror(errno)));
    struct stat info {};
    if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
      const int error = errno;
      ::close(fd);
      throw Error(fmt::format("cannot map {}: {}", path.string(),
                              S_ISREG(info.st_mode) ? std::strerror(error) : "not a regular file"));
    }
    size_ = static_cast<std::size_t>(info.st_size);
    if (size_ > 0) {
      // MAP_NORESERVE: a private writable mapping of a huge file must not count against swap up front.
      void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
      if (p == MAP_FAILED) {
        const int error = errno;
        ::close(fd);
        throw Error(fmt::format("cannot map {}: {}", path.string(), std::strerror(error)));
      }
      data_ = static_cast<char*>(p);
      ::madvise(p, size_, sequential ? MADV_SEQUENTIAL : MADV_RANDOM);  // a hint: failing changes nothing
    }
    ::close(fd);  // the mapping keeps the file alive
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::size_t size() const { return size_; }
  char* data() const { return data_; }
  std::string_view bytes() const { return {data_, size_}; }

 private:
  std::filesystem::path path_;
  char* data_ = nullptr;
  std::size_t size_ = 0;
};

/// A tensor over `file`'s bytes from `offset` (which the caller has checked fit), keeping the mapping alive as
/// long as the tensor or any view of it.
inline torch::Tensor tensor_over(const std::shared_ptr<MappedFile>& file, std::size_t offset,
                                 const std::vector<int64_t>& shape, torch::ScalarType dtype) {
  if (file->data() == nullptr)
    return torch::empty(shape, torch::TensorOptions().dtype(dtype));  // nothing mapped
  return torch::from_blob(
      file->data() + offset, shape, [keep = file](void*) {}, torch::TensorOptions().dtype(dtype));
}

}  // namespace torchfit::detail
