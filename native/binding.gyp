{
  # The native core. kernels*.cc are compiled twice: once for AVX-512 (Zen 4, Sapphire Rapids...)
  # and once for baseline x86-64; the addon picks one at run time (see dispatch in addon.cc).
  # -ffast-math lets GCC vectorize expf/tanhf/erff through glibc's libmvec; finite-math stays
  # off so NaN/Inf checks (non-finite loss detection) keep working. Turning finite-math off
  # also un-defines __FAST_MATH__, which is what glibc's math-vector.h keys its SIMD
  # declarations on, so it is defined by hand. -ffast-math is a compile flag only,
  # never a link flag, so crtfastmath (which would flip FTZ/DAZ for the whole process) is not linked.
  "variables": {
    "kernel_sources": ["src/kernels_elementwise.cc", "src/kernels_nn.cc", "src/kernels_attention.cc", "src/kernels_paged.cc", "src/kernels_quant.cc"],
    "kernel_cflags": ["-O3", "-std=c++17", "-fPIC", "-ffast-math", "-fno-finite-math-only", "-fno-math-errno", "-D__FAST_MATH__=1", "-Wno-builtin-macro-redefined"]
  },
  "targets": [
    {
      "target_name": "kernels_avx512",
      "type": "static_library",
      "sources": ["<@(kernel_sources)"],
      "include_dirs": ["/usr/include/x86_64-linux-gnu/openblas-pthread"],
      "defines": ["KNS=avx512"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["<@(kernel_cflags)", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mbmi2", "-mprefer-vector-width=512"]
    },
    {
      "target_name": "kernels_generic",
      "type": "static_library",
      "sources": ["<@(kernel_sources)"],
      "include_dirs": ["/usr/include/x86_64-linux-gnu/openblas-pthread"],
      "defines": ["KNS=generic"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["<@(kernel_cflags)"]
    },
    {
      "target_name": "megalith_native",
      "dependencies": ["kernels_avx512", "kernels_generic"],
      "sources": ["src/addon.cc", "src/pool.cc", "src/memory.cc", "src/gemm.cc", "src/random.cc", "src/cast.cc"],
      "include_dirs": ["/usr/include/x86_64-linux-gnu/openblas-pthread"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-O3", "-std=c++17", "-fexceptions"],
      "libraries": ["-lopenblas", "-lmvec", "-lpthread"]
    },
    {
      # MPI collectives, a separate addon so single-process use never loads MPI
      # (native/src/mpi_core.h describes the files).
      "target_name": "megalith_mpi",
      "sources": ["src/mpi.cc", "src/mpi_exec.cc", "src/mpi_watchdog.cc"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-O2", "-std=c++17", "-pthread", "<!@(mpicc --showme:compile)"],
      "libraries": ["<!@(mpicc --showme:link)", "-ldl", "-lpthread"]
    }
  ]
}
