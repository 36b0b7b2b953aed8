// SPDX-License-Identifier: MIT
#pragma once

#define TORCHFIT_VERSION_MAJOR 0
#define TORCHFIT_VERSION_MINOR 1
#define TORCHFIT_VERSION_PATCH 0
