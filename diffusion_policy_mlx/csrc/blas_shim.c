/* The unprefixed BLAS and LAPACK names libmlx.so imports, served by an OpenBLAS whose symbols
 * carry the prefix "scipy_" (the scipy-openblas32 wheel: scipy_cblas_sgemm, scipy_sgetrf_, ...).
 *
 * Each name is a GNU indirect function: its resolver returns the address of the prefixed
 * function, so the dynamic loader binds MLX's calls straight to OpenBLAS. There is no wrapper
 * frame and no prototype to keep in step with OpenBLAS; the LAPACK routines' hidden Fortran
 * string-length arguments pass through as MLX passes them.
 *
 * The library is linked without OpenBLAS: diffusion_policy_mlx/accel/blas.py loads
 * libscipy_openblas.so with RTLD_GLOBAL first, then this library (RTLD_GLOBAL too), and both
 * before mlx.core, whose unprefixed references then resolve here.
 *
 * The list is `nm -D --undefined-only libmlx.so` for mlx 0.32 less the C and C++ runtime;
 * tests/test_blas.py checks it against the installed libmlx.so.
 */

typedef void (*function)(void);

#define FORWARD(name)                                                     \
    extern void scipy_##name(void);                                       \
    static function resolve_##name(void) { return &scipy_##name; }        \
    __attribute__((visibility("default"), ifunc("resolve_" #name))) void name(void);

/* CBLAS: matmuls and convolutions */
FORWARD(cblas_sgemm)
FORWARD(cblas_dgemm)
FORWARD(cblas_cgemm)

/* LAPACK (Fortran names): mx.linalg */
FORWARD(sgeev_)
FORWARD(dgeev_)
FORWARD(cgeev_)
FORWARD(sgesdd_)
FORWARD(dgesdd_)
FORWARD(cgesdd_)
FORWARD(cheevd_)
FORWARD(ssyevd_)
FORWARD(dsyevd_)
FORWARD(sgeqrf_)
FORWARD(dgeqrf_)
FORWARD(sorgqr_)
FORWARD(dorgqr_)
FORWARD(sgetrf_)
FORWARD(dgetrf_)
FORWARD(sgetri_)
FORWARD(dgetri_)
FORWARD(spotrf_)
FORWARD(dpotrf_)
FORWARD(strtri_)
FORWARD(dtrtri_)
