// Declarations only: see gloo_decl/gloo/README.md.
#pragma once
#include "gloo/context.h"
