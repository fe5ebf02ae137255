// Integer ceil(a / b) for non-negative a and positive b: how many chunks, blocks or tiles of
// size b cover a items. Host and device, so the CPU loops and the CUDA launchers share it.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace sarl {

SARL_HD_INLINE constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace sarl
