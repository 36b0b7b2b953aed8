# SPDX-License-Identifier: MIT
# CMake helpers for programs that use torchfit, available after find_package(torchfit), add_subdirectory or
# FetchContent.
#
#   torchfit_add_executable(train train.cpp)       # add_executable + torchfit::torchfit + the shared header
#   torchfit_precompile_headers(my_target)          # the shared header for a target made otherwise
#
# libtorch's headers take most of a training program's compile time. These helpers compile <torch/torch.h> and
# <torchfit/torchfit.hpp> once per build tree into a precompiled header (target torchfit_precompiled_header) that
# every target made this way reuses, so editing a program recompiles only the program. The header is compiled with
# torchfit::torchfit's usage requirements and the directory's flags (CMAKE_CXX_FLAGS, the build type); options
# that change predefined macros (-pedantic, another -std) must be given to torchfit_precompiled_header too, or set
# for the whole project. A mismatch is reported by -Winvalid-pch, which CMake turns on, and the sources are then
# compiled without the header.
include_guard(GLOBAL)

# Makes `target` reuse the shared precompiled header of torch and torchfit, building it on first use.
function(torchfit_precompile_headers target)
  if(NOT TARGET torchfit_precompiled_header)
    set(source ${CMAKE_BINARY_DIR}/torchfit_precompiled_header.cpp)
    if(NOT EXISTS ${source})
      file(WRITE ${source} "// The translation unit of torchfit's shared precompiled header.\n")
    endif()
    add_library(torchfit_precompiled_header OBJECT ${source})
    target_link_libraries(torchfit_precompiled_header PUBLIC torchfit::torchfit)
    target_precompile_headers(torchfit_precompiled_header PUBLIC <torch/torch.h> <torchfit/torchfit.hpp>)
  endif()
  target_precompile_headers(${target} REUSE_FROM torchfit_precompiled_header)
endfunction()

# add_executable(name sources...) linked to torchfit::torchfit, with the shared precompiled header.
function(torchfit_add_executable name)
  add_executable(${name} ${ARGN})
  target_link_libraries(${name} PRIVATE torchfit::torchfit)
  torchfit_precompile_headers(${name})
endfunction()
