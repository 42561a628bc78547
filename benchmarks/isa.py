"""What the benchmarks' popcount kernels compile to, and the AVX2-only target they can compile for.

- ``popcount_instruction_counts``: the instructions of each popcount strategy's inner loop,
  counted in the assembly of a fresh compile for numba's current target (the tables' "popcount
  ISA seen in the assembly": ``vpopcntq`` means AVX-512 VPOPCNTDQ, ``vpshufb`` the AVX2
  nibble table).
- ``avx2_target_env``: the environment that makes a child process compile every numba kernel
  for an AVX2-only x86-64 CPU (Zen 3's scheduling model and features: those of the host's
  that a Zen 3 also has, so no AVX-512, AMX, AVX10 or GFNI; a cache directory of its own)
  and caps torch at AVX2 (oneDNN's ``ONEDNN_MAX_CPU_ISA``, ATen's ``ATEN_CPU_CAPABILITY``):
  on an AVX-512 host it measures what most laptops and desktops get, and it never compiles
  for an instruction the host lacks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import numba
from llvmlite import binding as llvm_binding

from runtime.kernels.bconv import _popcount_pair, default_popcount
from runtime.kernels.popcount import patch_popcounts4_high, patch_popcounts4_low

AVX2_CPU_NAME = "znver3"
# what LLVM's znver3 (AMD Zen 3, AVX2 without AVX-512) offers: the child keeps a host feature
# only if it is one of these, so that it neither uses AVX-512 nor anything else an AVX2
# desktop lacks (GFNI, AVX-VNNI, ...), nor anything this host lacks
ZEN3_FEATURES = frozenset((
    "64bit", "adx", "aes", "avx", "avx2", "bmi", "bmi2", "clflushopt", "clwb", "clzero", "cmov",
    "crc32", "cx16", "cx8", "f16c", "fma", "fsgsbase", "fxsr", "invpcid", "lzcnt", "mmx",
    "movbe", "mwaitx", "pclmul", "pku", "popcnt", "prfchw", "rdpid", "rdrnd", "rdseed", "sahf",
    "sha", "shstk", "sse", "sse2", "sse3", "sse4.1", "sse4.2", "sse4a", "ssse3", "vaes",
    "vpclmulqdq", "wbnoinvd", "xsave", "xsavec", "xsaveopt", "xsaves",
))


def cpuinfo_mhz() -> str:
    """The CPU's model name and /proc/cpuinfo's MHz ("?" where not found)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    mhz = re.findall(r"cpu MHz\s*:\s*([\d.]+)", text)
    name = re.search(r"model name\s*:\s*(.*)", text)
    return f"{name.group(1) if name else '?'}, {mhz[0] if mhz else '?'} MHz"


def _plain_pair(words, offsets, count, weights, acc0, acc1):
    _popcount_pair(words, 0, 1, offsets, count, weights, acc0, acc1, 0, acc0.shape[0])


def _bytes_quad(nibbles, offsets, count, weights, acc):
    patch_popcounts4_low(nibbles, 0, 1, offsets, count, weights, 0, acc)
    patch_popcounts4_high(nibbles, 0, 1, offsets, count, weights, 0, acc)


def _innermost_popcount_loop(asm: str) -> list[str]:
    """Mnemonics of the main inner loop of a popcount strategy in ``asm``: of the innermost
    loops (a label up to a backward jump to it, holding no other loop), the one with the most
    vpshufb + vpopcntq."""
    lines = [line.split("#")[0].strip() for line in asm.splitlines()]
    labels = {line[:-1]: i for i, line in enumerate(lines) if re.fullmatch(r"\.LBB\S+:", line)}
    loops = []
    for i, line in enumerate(lines):
        jump = re.fullmatch(r"j\w+\s+(\.LBB\S+)", line)
        if jump and labels.get(jump.group(1), i) < i:
            loops.append((labels[jump.group(1)], i))
    innermost = [(a, b) for a, b in loops
                 if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    best: list[str] = []
    for a, b in innermost:
        body = [op.split()[0] for op in lines[a + 1:b + 1] if op and not op.startswith(".")]
        if body.count("vpshufb") + body.count("vpopcntq") > (best.count("vpshufb")
                                                            + best.count("vpopcntq")):
            best = body
    return best


def popcount_instruction_counts() -> dict[str, dict[str, int]]:
    """Instructions of the inner loop of each strategy (the "vpopcntdq" pass of four words
    for a pixel pair, the "avx2" 4-pixel intrinsics), each from the assembly of a fresh,
    uncached compile of a small wrapper (numba cannot inspect cached code; the kernel holds
    both strategies): the popcount ops, all vector ops, and the vectors (4 channels of one
    pixel) per iteration, from the vpshufb count (2 per vector in both)."""
    u64 = numba.types.uint64
    one, two = u64[::1], u64[:, ::1]
    offsets = numba.types.int64[::1]
    wrappers = {
        "vpopcntdq": (_plain_pair, (one, offsets, numba.types.int64, two, one, one)),
        "avx2": (_bytes_quad, (two, offsets, numba.types.int64, two, two)),
    }
    found = {}
    for name, (fn, signature) in wrappers.items():
        fresh = numba.njit(fn)
        fresh.compile(signature)
        body = _innermost_popcount_loop(fresh.inspect_asm(signature))
        counts = {op: body.count(op) for op in ("vpopcntq", "vpshufb", "vpsadbw", "vpsrlw")}
        counts["vector ALU ops"] = sum(op.startswith("vp") and op != "vpbroadcastq"
                                       for op in body)
        counts["vectors"] = counts["vpshufb"] // 2 or counts["vpopcntq"]
        found[name] = counts
    return found


def describe_instructions(found: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{name}: " + ", ".join(f"{op} x{n}" for op, n in ops.items())
                     for name, ops in found.items())


def popcount_instructions() -> str:
    """``popcount_instruction_counts`` as one line of text."""
    return describe_instructions(popcount_instruction_counts())


def seen_popcount_isa(found: dict[str, dict[str, int]], strategy: str | None = None) -> str:
    """The popcount instructions a 3x3 layer's default strategy (or ``strategy``) runs here, as
    its inner loop's assembly shows them."""
    strategy = strategy or default_popcount()
    counts = found[strategy]
    if counts["vpopcntq"]:
        isa = f"AVX-512 VPOPCNTDQ (vpopcntq x{counts['vpopcntq']} per loop)"
    elif counts["vpshufb"]:
        isa = f"AVX2 nibble table (vpshufb x{counts['vpshufb']}, no vpopcntq)"
    else:
        isa = "neither vpopcntq nor vpshufb (scalar or another ISA)"
    return f"{isa}, strategy {strategy!r}"


def avx2_features(host_features: str) -> str:
    """``host_features`` (llvm's flat "+a,-b,..." string) with every feature outside
    ``ZEN3_FEATURES`` turned off (AVX-512, AMX, AVX10, GFNI, ...)."""
    items = []
    for item in host_features.split(","):
        item = item.strip()
        if len(item) > 1 and item[0] == "+" and item[1:] not in ZEN3_FEATURES:
            item = "-" + item[1:]
        if item:
            items.append(item)
    return ",".join(items)


def avx2_target_env(environ: Mapping[str, str], cache_dir: Path) -> dict[str, str]:
    """``environ`` for a child process that compiles numba for an AVX2-only CPU into
    ``cache_dir`` and runs torch at AVX2 at most (see the module docstring)."""
    return {
        **environ,
        "NUMBA_CPU_NAME": AVX2_CPU_NAME,
        "NUMBA_CPU_FEATURES": avx2_features(llvm_binding.get_host_cpu_features().flatten()),
        "NUMBA_CACHE_DIR": str(cache_dir),
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    }


def host_has_avx512() -> bool:
    """True when the host offers any AVX-512 feature (then the AVX2 target differs from it)."""
    return any(item.startswith("+avx512")
               for item in llvm_binding.get_host_cpu_features().flatten().split(","))


def default_avx2_cache() -> Path:
    """The AVX2 target's numba cache: beside the current one, never inside it."""
    current = os.environ.get("NUMBA_CACHE_DIR") or str(Path(".cache") / "numba")
    return Path(current).resolve().parent / "numba-avx2"
