// Macros that let one inline function serve both the CPU loops and the CUDA kernels, so the
// per-element math is written (and tested on CPU) once.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SARL_HOST_DEVICE __host__ __device__
#define SARL_INLINE __forceinline__
#else
#define SARL_HOST_DEVICE
#define SARL_INLINE inline
#endif

#define SARL_HD_INLINE SARL_HOST_DEVICE SARL_INLINE
