"""Speed machinery: the fast CPU BLAS, CPU streams and the CPU and CUDA kernels."""
