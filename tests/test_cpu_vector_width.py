"""The CPU kernel is compiled once per instruction set, at that set's own register width.

Why: csrc/cpu/kernel_avx512.cpp, kernel_avx2.cpp and kernel_baseline.cpp each compile the same
GCC vector code (guided_ops_kernel.h, simd.h) under `#pragma GCC target`, in namespaces
tita::cpu::avx512 / avx2 / baseline. GCC lowers a vector operation the target cannot do in its
registers piecewise: when the AVX2 unit used 16-lane vectors, GCC 12 did its compares and selects
element by element, through memory, and the AVX2 kernel ran 8-12x slower than the AVX-512 one.
How fast each build runs is measured in benchmarks/run_ops_cpu.py (TITA_EXT_CPU_CAPABILITY=avx2),
never asserted here; these tests check the property itself, deterministically:

- GCC's -Wvector-operation-performance reports exactly such operations ("vector operation will be
  expanded piecewise / in parallel"). simd.h makes it an error in every kernel unit; each unit,
  compiled with setup.py's flags and the warning asked for on the command line, reports none.
  A control shows GCC reports the historical case (16 fp32 lanes under AVX2) and that simd.h
  turns it into a compile error.
- simd.h's static_assert refuses a unit whose vector is not exactly one register of its set.
- The built module's instructions: tita::cpu::avx512 code uses zmm registers, tita::cpu::avx2 code
  uses ymm and no AVX-512 (EVEX) instruction, tita::cpu::baseline code no VEX or EVEX instruction
  at all (it must run on any x86-64).

The compiles need g++ (about 10 s per unit at -O3, the three side by side); the disassembly needs
objdump and a built tita_ext._C. Each test skips, saying why, when its tool or the build is missing.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import platform
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_DIR = os.path.join(ROOT, "csrc", "cpu")
ISAS = ("avx512", "avx2", "baseline")
EXPANDED = "vector operation will be expanded"

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="the per-instruction-set kernel units are built on x86-64 only")


# ---------------------------------------------------------------- compiling the kernel units

def _compiler() -> str:
    """The C++ compiler torch.utils.cpp_extension builds with (CXX, else c++); skips unless GCC."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler {cxx!r} on PATH (set CXX): the kernel units cannot be compiled here")
    version = subprocess.run([cxx, "--version"], check=False, capture_output=True, text=True).stdout
    if "clang" in version.lower() or "Free Software Foundation" not in version:
        pytest.skip(f"{cxx} is not GCC ({version.splitlines()[0] if version else '?'}): the per-instruction-set "
                    "units and -Wvector-operation-performance are GCC's")
    return cxx


def _setup_cxx_flags() -> list[str]:
    """The `cxx = [...]` flags of setup.py's extension(), read from its source (it cannot be imported)."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["cxx"]:
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no `cxx = [...]` list of compile flags: update _setup_cxx_flags")


def _compile_command(cxx: str, source: str, out: str, *extra: str) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in include_paths()]
    # as setup.py's build: python's -DNDEBUG -fPIC, setup.py's flags, the C++ standard torch asks for
    return [cxx, "-DNDEBUG", "-fPIC", *_setup_cxx_flags(), "-std=c++20", *includes, *extra, "-c", source, "-o", out]


@pytest.fixture(scope="module")
def unit_diagnostics(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Each kernel unit compiled to an object with -Wvector-operation-performance, side by side."""
    cxx = _compiler()
    out_dir = tmp_path_factory.mktemp("kernel_units")
    procs = {}
    for isa in ISAS:
        cmd = _compile_command(cxx, os.path.join(CPU_DIR, f"kernel_{isa}.cpp"), str(out_dir / f"{isa}.o"),
                               "-Wvector-operation-performance")
        procs[isa] = (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for isa, (cmd, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        results[isa] = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("isa", ISAS)
def test_kernel_unit_has_no_vector_operation_wider_than_its_registers(unit_diagnostics, isa):
    result = unit_diagnostics[isa]
    expanded = sorted({line for line in result.stderr.splitlines() if EXPANDED in line})
    assert not expanded, f"kernel_{isa}.cpp: GCC splits these vector operations into pieces:\n" + "\n".join(expanded)
    assert result.returncode == 0, f"kernel_{isa}.cpp does not compile:\n{result.stderr[-3000:]}"


def test_gcc_reports_a_vector_wider_than_the_registers_and_simd_h_makes_it_an_error(tmp_path):
    """The historical case: a 16-lane fp32 compare and select under AVX2, after simd.h's pragma."""
    cxx = _compiler()
    source = tmp_path / "wide_under_avx2.cpp"
    source.write_text(
        '#define TITA_CPU_ISA baseline\n#define TITA_CPU_LANES 4\n#include "simd.h"\n'
        '#pragma GCC target("avx2,fma")\n'
        "typedef float v16 __attribute__((vector_size(64)));\n"
        "v16 wider_max(v16 a, v16 b) { return a > b ? a : b; }\n")
    cmd = [cxx, "-O3", "-std=c++20", f"-I{CPU_DIR}", "-c", str(source), "-o", str(tmp_path / "wide.o")]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, "a 16-lane select under AVX2 compiled although simd.h makes the warning an error"
    assert f"error: {EXPANDED}" in result.stderr and "-Werror=vector-operation-performance" in result.stderr, \
        result.stderr[-3000:]


def test_a_unit_whose_vector_is_not_one_register_does_not_compile(tmp_path):
    """The AVX2 unit with AVX-512's 16 lanes (the slow build) is refused by simd.h's static_assert."""
    cxx = _compiler()
    source = tmp_path / "avx2_with_16_lanes.cpp"
    source.write_text('#define TITA_CPU_ISA avx2\n#define TITA_CPU_LANES 16\n#include "simd.h"\n')
    cmd = [cxx, "-std=c++20", f"-I{CPU_DIR}", "-fsyntax-only", str(source)]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "TITA_CPU_LANES must fill exactly one register of the unit's instruction set" in result.stderr, \
        result.stderr[-3000:]


# ---------------------------------------------------------------- the built module's instructions

# The kernel's hot loops (csrc/cpu): each must use its set's widest registers.
HOT_FUNCTIONS = ("chunk_lse", "masses64", "race_candidates", "scan_range")
WIDEST = {"avx512": "zmm", "avx2": "ymm", "baseline": "xmm"}
_FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")
_LEGACY_PREFIXES = {"26", "2e", "36", "3e", "64", "65", "66", "67", "f0", "f2", "f3"}


@dataclass
class FunctionCode:
    """One function's instructions: how many of each encoding and each register kind."""

    encodings: Counter = field(default_factory=Counter)  # legacy / vex / evex
    registers: Counter = field(default_factory=Counter)  # xmm / ymm / zmm / k (AVX-512 mask)


def _encoding(raw: list[str]) -> str:
    """x86-64: after legacy prefixes, c4/c5 start a VEX instruction (AVX, AVX2, BMI) and 62 an EVEX one (AVX-512)."""
    first = next((b for b in raw if b not in _LEGACY_PREFIXES), "")
    return {"c4": "vex", "c5": "vex", "62": "evex"}.get(first, "legacy")


@lru_cache(maxsize=1)
def _kernel_functions() -> dict[str, dict[str, FunctionCode]]:
    """{isa: {demangled name: FunctionCode}} for every function of namespace tita::cpu::<isa> in tita_ext._C."""
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed: the built module's instructions cannot be read")
    try:
        spec = importlib.util.find_spec("tita_ext._C")
    except ModuleNotFoundError:  # tita_ext itself is not importable
        spec = None
    if spec is None or not spec.origin:
        pytest.skip("tita_ext._C is not built (python setup.py build_ext --inplace)")
    comment = subprocess.run(["objdump", "-s", "-j", ".comment", spec.origin], check=False, capture_output=True,
                             text=True).stdout
    if "GCC:" not in comment or "clang" in comment.lower():
        pytest.skip("tita_ext._C was not built by GCC: only GCC builds the per-instruction-set kernels")
    dump = subprocess.run(["objdump", "-d", "-C", "--insn-width=15", spec.origin], capture_output=True, text=True,
                          check=True).stdout
    found: dict[str, dict[str, FunctionCode]] = {isa: {} for isa in ISAS}
    current = None
    for line in dump.splitlines():
        header = _FUNCTION.match(line)
        if header:
            name = header.group(1)
            isa = next((i for i in ISAS if name.startswith(f"tita::cpu::{i}::")), None)
            current = found[isa].setdefault(name, FunctionCode()) if isa else None
            continue
        parts = line.split("\t")
        if current is None or len(parts) < 3:
            continue
        current.encodings[_encoding(parts[1].split())] += 1
        for reg in re.findall(r"%(xmm|ymm|zmm|k)[0-9]+", parts[2]):
            current.registers[reg] += 1
    if not all(found.values()):
        missing = [isa for isa, fns in found.items() if not fns]
        pytest.fail(f"tita_ext._C has no functions in namespace(s) {missing} (stripped build?)")
    return found


def _functions_with(isa: str, bad) -> list[str]:
    return [f"{name[:140]}: {dict(code.encodings)} {dict(code.registers)}"
            for name, code in _kernel_functions()[isa].items() if bad(code)]


@pytest.mark.parametrize("isa", ISAS)
def test_hot_loops_use_the_widest_registers_of_their_set(isa):
    functions = _kernel_functions()[isa]
    for hot in HOT_FUNCTIONS:
        codes = [code for name, code in functions.items()
                 if re.match(rf"tita::cpu::{isa}::(\(anonymous namespace\)::)?{hot}\(", name)]
        assert codes, f"no function tita::cpu::{isa}::{hot} in tita_ext._C (renamed? update HOT_FUNCTIONS)"
        assert sum(code.registers[WIDEST[isa]] for code in codes) > 0, \
            f"tita::cpu::{isa}::{hot} uses no {WIDEST[isa]} register: it is not vectorised at the width of {isa}"


def test_avx2_code_has_no_avx512_instruction():
    bad = _functions_with("avx2", lambda c: c.encodings["evex"] or c.registers["zmm"] or c.registers["k"])
    assert not bad, "AVX-512 (EVEX) instructions in the AVX2 kernel, which must run on AVX2-only CPUs:\n" + \
        "\n".join(bad)


def test_baseline_code_has_no_avx_instruction():
    bad = _functions_with("baseline", lambda c: c.encodings["vex"] or c.encodings["evex"] or c.registers["ymm"]
                          or c.registers["zmm"])
    assert not bad, "AVX / AVX-512 (VEX / EVEX) instructions in the baseline kernel, which must run on any " \
        "x86-64:\n" + "\n".join(bad)
