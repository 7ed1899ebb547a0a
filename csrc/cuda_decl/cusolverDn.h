// Declarations only: see cuda_decl/README.md.
#pragma once
struct cusolverDnContext;
typedef struct cusolverDnContext* cusolverDnHandle_t;
