// Declarations only: see cuda_decl/README.md.
#pragma once
struct cublasLtContext;
typedef struct cublasLtContext* cublasLtHandle_t;
