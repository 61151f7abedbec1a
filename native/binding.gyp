{
  # The native core. The kernel sources (kernels_*.cc) are compiled once per instruction set,
  # each into its own namespace (KNS): avx512 (AVX-512 F/BW/VL/DQ + FMA + F16C), avx2 (AVX2 +
  # FMA + F16C) and generic (the compiler's baseline for the target: plain x86-64, or any other
  # architecture). Nothing else gets ISA flags, and api.cc picks a set at run time from the
  # CPU's features (MEGALITH_KERNELS or setKernelSet() override). Off x86-64 only generic is
  # built.
  # -ffast-math lets GCC vectorize expf/tanhf/erff through glibc's libmvec; finite-math stays
  # off so NaN/Inf checks (non-finite loss detection) keep working. Turning finite-math off
  # also un-defines __FAST_MATH__, which is what glibc's math-vector.h keys its SIMD
  # declarations on, so it is defined by hand. -ffast-math is a compile flag only,
  # never a link flag, so crtfastmath (which would flip FTZ/DAZ for the whole process) is not linked.
  "variables": {
    "kernel_sources": ["src/kernels_elementwise.cc", "src/kernels_nn.cc", "src/kernels_attention.cc", "src/kernels_paged.cc", "src/kernels_quant.cc"],
    "kernel_cflags": ["-O3", "-std=c++17", "-fPIC", "-ffast-math", "-fno-finite-math-only", "-fno-math-errno", "-D__FAST_MATH__=1", "-Wno-builtin-macro-redefined"],
    # Debian's OpenBLAS headers live under the multiarch triplet; list both triplets we build on.
    "openblas_includes": ["/usr/include/x86_64-linux-gnu/openblas-pthread", "/usr/include/aarch64-linux-gnu/openblas-pthread", "/usr/include/openblas"],
    # oneDNN (Debian: libdnnl-dev) for bf16 GEMM; without it gemm_16bit.cc uses its fallback.
    "have_dnnl": "<!(test -f /usr/include/dnnl.hpp && echo 1 || echo 0)"
  },
  "targets": [
    {
      "target_name": "kernels_generic",
      "type": "static_library",
      "sources": ["<@(kernel_sources)"],
      "include_dirs": ["<@(openblas_includes)"],
      "defines": ["KNS=generic"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["<@(kernel_cflags)"]
    },
    {
      "target_name": "megalith_native",
      "dependencies": ["kernels_generic"],
      "sources": ["src/addon.cc", "src/api.cc", "src/pool.cc", "src/memory.cc", "src/gemm.cc", "src/gemm_16bit.cc", "src/random.cc", "src/cast.cc"],
      "include_dirs": ["<@(openblas_includes)"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-O3", "-std=c++17", "-fexceptions"],
      "libraries": ["-lopenblas", "-lpthread"],
      "conditions": [
        ["target_arch=='x64'", {
          "dependencies": ["kernels_avx512", "kernels_avx2"],
          "libraries": ["-lmvec"]
        }],
        ["have_dnnl==1", {
          "defines": ["MG_HAVE_DNNL"],
          "libraries": ["-ldnnl", "-lgomp"]
        }]
      ]
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
  ],
  "conditions": [
    ["target_arch=='x64'", {
      "targets": [
        {
          "target_name": "kernels_avx512",
          "type": "static_library",
          "sources": ["<@(kernel_sources)"],
          "include_dirs": ["<@(openblas_includes)"],
          "defines": ["KNS=avx512"],
          "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
          "cflags_cc": ["<@(kernel_cflags)", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", "-mbmi2", "-mprefer-vector-width=512"]
        },
        {
          "target_name": "kernels_avx2",
          "type": "static_library",
          "sources": ["<@(kernel_sources)"],
          "include_dirs": ["<@(openblas_includes)"],
          "defines": ["KNS=avx2"],
          "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
          "cflags_cc": ["<@(kernel_cflags)", "-mavx2", "-mfma", "-mf16c"]
        }
      ]
    }]
  ]
}
