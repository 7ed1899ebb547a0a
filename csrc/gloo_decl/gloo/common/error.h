// Declarations only: see gloo_decl/gloo/README.md.
#pragma once
#include <stdexcept>
