"""engine/cpu.py: the CPU line benchmarks print, from /proc/cpuinfo texts of three kinds."""
from engine.cpu import describe

SAPPHIRE = """processor : 0
model name : Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags : fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile
processor : 1
model name : Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
"""
EPYC = "model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n"


def test_the_widest_vector_unit_and_bf16_are_read_from_the_flags():
    intel = describe(SAPPHIRE)
    assert intel.model.startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert intel.widest == "AVX-512" and intel.has_bf16
    assert intel.vector_isa[-3:] == ["avx512_bf16", "amx_tile", "amx_bf16"]
    amd = describe(EPYC)
    assert amd.model == "AMD EPYC" and amd.widest == "AVX2" and not amd.has_bf16
    assert amd.line().startswith("CPU: AMD EPYC, ")
    assert "AVX2 (sse4_2 avx avx2 fma f16c)" in amd.line()
    arm = describe(GRAVITON)
    assert arm.widest == "NEON" and arm.model            # no model name line: a fallback
    assert describe("").widest == "scalar"
    here = describe()                                    # this machine: never raises
    assert here.cores >= 1 and here.line().startswith("CPU: ")
