// Declarations only: see cuda_decl/README.md.
#pragma once
struct cublasContext;
typedef struct cublasContext* cublasHandle_t;

typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;
