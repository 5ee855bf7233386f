// Forwards to the CPU emulation of CUDA (see emu.h).
#pragma once
#include "emu.h"
