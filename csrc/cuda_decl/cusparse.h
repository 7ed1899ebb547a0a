// Declarations only: see cuda_decl/README.md.
#pragma once
struct cusparseContext;
typedef struct cusparseContext* cusparseHandle_t;

typedef enum { CUSPARSE_STATUS_SUCCESS = 0 } cusparseStatus_t;
