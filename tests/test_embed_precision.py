"""``precision="auto"``: the choice follows the hardware (issue 24).

The test machine is one kind of CPU; the other kinds are described by real ``/proc/cpuinfo`` excerpts (or
injected :class:`CpuInfo` / :class:`CudaInfo`) so both branches run everywhere. One test checks the real
detection on this machine against ``/proc/cpuinfo`` and torch's own probes.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import pytest
import torch

import subcell_screen.embed.precision as precision_mod
from subcell_screen.embed import (
    CpuInfo,
    CudaInfo,
    Embedder,
    ModelError,
    PrecisionChoice,
    PrecisionWarning,
    SubCellModel,
    cpu_info,
    get_model_card,
    load_model,
    resolve_precision,
)
from subcell_screen.embed.precision import parse_cpuinfo
from subcell_screen.embed.testing import make_tiny_checkpoint

# /proc/cpuinfo excerpts (first processor block; flags lines as the kernel prints them, some trimmed of flags
# the parser ignores)
MILAN = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 1
model name	: AMD EPYC 7B13
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht \
syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid pni pclmulqdq \
ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy abm \
sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 \
erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 clzero xsaveerptr arat umip vaes \
vpclmulqdq rdpid fsrm

processor	: 1
model name	: AMD EPYC 7B13
flags		: fpu avx2 avx512f avx512_bf16
"""
GENOA = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC 9R14
flags		: fpu sse sse2 fma avx f16c avx2 avx512f avx512dq avx512ifma avx512cd sha_ni avx512bw avx512vl \
avx512_bf16 clzero avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq
"""
SKYLAKE = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz
flags		: fpu sse sse2 fma avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl pku ospke
"""
SAPPHIRE_RAPIDS = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags		: fpu sse sse2 fma avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx_vnni avx512_bf16 \
avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq avx512_fp16 amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc \
dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm \
bf16 dgh rng
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: 0xd40
CPU revision	: 1
"""
GRAVITON2 = """processor	: 0
BogoMIPS	: 243.75
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0c
CPU revision	: 1
"""

AVX2_CPU = parse_cpuinfo(MILAN, capability="AVX2")
AMX_CPU = parse_cpuinfo(SAPPHIRE_RAPIDS, capability="AVX512")


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(precision_mod, "_WARNED", set())


@pytest.mark.parametrize("text, capability, unit, flags", [
    (MILAN, "AVX2", None, ("avx2",)),
    (GENOA, "AVX512", "AVX512-BF16", ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")),
    (SKYLAKE, "AVX512", None, ("avx2", "avx512f")),
    (SAPPHIRE_RAPIDS, "AVX512", "AMX-BF16",
     ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")),
    (GRAVITON3, "SVE256", "Arm BF16", ("asimd", "sve", "i8mm", "bf16")),
    (GRAVITON2, "DEFAULT", None, ("asimd",)),
])
def test_parse_cpuinfo_finds_the_native_bf16_unit(text, capability, unit, flags):
    info = parse_cpuinfo(text, capability=capability)
    assert info.flags == flags  # only the first processor block is read (Milan's second block is bogus)
    assert info.bf16_unit == unit and info.native_bf16 is (unit is not None)
    assert info.arch == ("aarch64" if "Features" in text else "x86_64")
    assert info.capability == capability


def test_flags_from_torch_where_there_is_no_proc_cpuinfo():
    # macOS / Windows: cpu_info() builds CpuInfo from torch's cpuid probes instead of /proc/cpuinfo
    info = CpuInfo("Intel64 Family 6 Model 143", "AVX512", ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"))
    assert info.bf16_unit == "AMX-BF16"
    assert CpuInfo("arm", "DEFAULT", ("asimd",), arch="arm64").describe() == "arm (DEFAULT; no Arm BF16)"


def test_parse_cpuinfo_names():
    assert parse_cpuinfo(MILAN, capability="AVX2").name == "AMD EPYC 7B13"
    assert parse_cpuinfo(GRAVITON3, capability="SVE256").name == "Arm CPU (implementer 0x41, part 0xd40)"
    assert AVX2_CPU.describe() == "AMD EPYC 7B13 (AVX2; no AVX512-BF16/AMX)"
    assert AMX_CPU.describe() == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (AVX512; AMX-BF16)"
    genoa = parse_cpuinfo(GENOA, capability="AVX512")
    assert genoa.describe() == "AMD EPYC 9R14 (AVX512; AVX512-BF16, no AMX)"


def test_onednn_isa_cap_turns_native_bf16_off():
    # oneDNN runs torch's bf16 matmuls; capped below AVX512_CORE_BF16 it emulates them
    capped = parse_cpuinfo(GENOA, capability="AVX2", isa_cap="avx2")
    assert not capped.native_bf16 and "ONEDNN_MAX_CPU_ISA=avx2" in capped.describe()
    assert parse_cpuinfo(GENOA, capability="AVX512", isa_cap="AVX512_CORE_BF16").bf16_unit == "AVX512-BF16"
    assert parse_cpuinfo(SAPPHIRE_RAPIDS, capability="AVX512", isa_cap="AVX512_CORE_BF16").bf16_unit == "AVX512-BF16"
    assert parse_cpuinfo(SAPPHIRE_RAPIDS, capability="AVX512", isa_cap="AVX512_CORE_AMX").bf16_unit == "AMX-BF16"
    assert resolve_precision("auto", "cpu", cpu=capped).precision == "fp32"


def test_this_machines_detection_matches_proc_cpuinfo_and_torch():
    """The real detection (no mock) on whatever CPU runs the tests."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if not text or "flags" not in text:
        pytest.skip("needs an x86 Linux /proc/cpuinfo (the other kinds are covered by the excerpts above)")
    info = cpu_info()
    first = text.split("\n\n")[0]
    flags = set(next(ln for ln in first.splitlines() if ln.startswith("flags")).split(":", 1)[1].split())
    assert set(info.flags) == {f for f in precision_mod._X86_FLAGS if f in flags}
    assert info.capability == torch.backends.cpu.get_cpu_capability()
    if hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        assert torch.cpu._is_avx512_bf16_supported() == ("avx512_bf16" in flags)
    capped = bool(precision_mod._isa_rank(os.environ.get("ONEDNN_MAX_CPU_ISA"))
                  < precision_mod._ONEDNN_ISAS.index("AVX512_CORE_BF16"))
    native = bool({"avx512_bf16", "amx_bf16"} & flags) and not capped
    assert info.native_bf16 is native
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == ("bf16" if native else "fp32")
    assert choice.cpu_name == info.name and choice.device == "cpu" and choice.requested == "auto"


def test_auto_picks_fp32_on_a_cpu_that_emulates_bf16():
    c = resolve_precision("auto", "cpu", cpu=AVX2_CPU)
    assert (c.requested, c.precision, c.native_bf16, c.bf16_unit) == ("auto", "fp32", False, None)
    assert "AMD EPYC 7B13 (AVX2; no AVX512-BF16/AMX)" in c.reason and "no native bf16" in c.reason
    assert c.warning is None and c.device_name == "AMD EPYC 7B13" and c.cpu_flags == ("avx2",)


@pytest.mark.parametrize("cpu, unit", [(AMX_CPU, "AMX-BF16"), (parse_cpuinfo(GENOA, capability="AVX512"),
                                                               "AVX512-BF16"),
                                       (parse_cpuinfo(GRAVITON3, capability="SVE256"), "Arm BF16")])
def test_auto_picks_bf16_on_a_cpu_with_native_bf16(cpu, unit):
    c = resolve_precision("auto", "cpu", cpu=cpu)
    assert (c.precision, c.native_bf16, c.bf16_unit) == ("bf16", True, unit)
    assert unit in c.reason


def test_explicit_bf16_on_an_emulating_cpu_warns_once_with_a_measured_reason(caplog):
    with caplog.at_level(logging.WARNING, logger="subcell_screen.embed.precision"):
        with pytest.warns(PrecisionWarning) as rec:
            c = resolve_precision("bf16", "cpu", cpu=AVX2_CPU)
    assert c.precision == "bf16" and c.requested == "bf16"  # honoured
    (w,) = rec
    msg = str(w.message)
    assert msg == c.warning and caplog.records[-1].getMessage() == msg
    assert "AMD EPYC 7B13 (AVX2; no AVX512-BF16/AMX)" in msg and "emulates" in msg
    # the figure is timed on the spot: "... measured X ms in bf16 vs Y ms in fp32 here (Zx ...)"
    assert "matmul measured" in msg and " ms in bf16 vs " in msg and " ms in fp32 here (" in msg
    assert "precision='auto' would pick fp32" in msg
    n = len(caplog.records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        again = resolve_precision("bfloat16", "cpu", cpu=AVX2_CPU)
    assert again.precision == "bf16" and again.warning.startswith("precision='bf16' requested on CPU AMD EPYC 7B13")
    assert len(caplog.records) == n
    # bf16-pure is another choice: warned once too
    with pytest.warns(PrecisionWarning):
        resolve_precision("bf16-pure", "cpu", cpu=AVX2_CPU)


def test_explicit_choices_that_run_natively_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", "cpu", cpu=AMX_CPU).warning is None
        assert resolve_precision("fp32", "cpu", cpu=AVX2_CPU).reason == "requested precision='fp32'"
        assert resolve_precision("fp16", "cpu", cpu=AMX_CPU).warning is None  # AVX512-FP16
    with pytest.warns(PrecisionWarning, match="no native fp16"):
        resolve_precision("fp16", "cpu", cpu=parse_cpuinfo(GENOA, capability="AVX512"))


def test_cuda_choice_follows_compute_capability():
    h100 = CudaInfo("NVIDIA H100 80GB HBM3", (9, 0), True)
    v100 = CudaInfo("Tesla V100-SXM2-16GB", (7, 0), False)
    c = resolve_precision("auto", "cuda:0", cpu=AVX2_CPU, cuda=h100)
    assert (c.precision, c.bf16_unit, c.cuda_capability, c.device) == ("bf16", "tensor cores", "9.0", "cuda:0")
    assert c.cpu_name == "AMD EPYC 7B13"  # the host is recorded too
    c = resolve_precision("auto", "cuda", cpu=AVX2_CPU, cuda=v100)
    assert c.precision == "fp32" and "compute capability 7.0" in c.reason and "no bf16 tensor cores" in c.reason
    with pytest.warns(PrecisionWarning) as rec:
        c = resolve_precision("bf16", "cuda", cpu=AVX2_CPU, cuda=v100)
    assert c.precision == "bf16" and "matmul measured" not in str(rec[0].message)  # CPU timing only on CPUs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("fp16", "cuda", cpu=AVX2_CPU, cuda=v100).warning is None


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown precision 'int8'.*'auto', 'fp32', 'bf16'"):
        resolve_precision("int8", "cpu", cpu=AVX2_CPU)


def test_choice_is_json_for_provenance():
    c = resolve_precision("auto", "cpu", cpu=AMX_CPU)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["precision"] == "bf16" and d["requested"] == "auto" and d["bf16_unit"] == "AMX-BF16"
    assert d["cpu_flags"] == list(AMX_CPU.flags) and d["cpu_name"].startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert str(c).startswith("bf16 (auto: CPU Intel(R) Xeon(R)")
    assert resolve_precision(c, "cpu") is c  # a choice passes through unchanged on its device


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("prec")
    make_tiny_checkpoint(cache, "rybg/MAE-CellS-ProtS-Pool", width=64, depth=2, heads=2, seed=3)
    return cache


@pytest.mark.parametrize("kind", ["emulated", "native"])
def test_load_model_and_embedder_follow_the_cpu_kind(tiny_cache, monkeypatch, kind):
    cpu = AVX2_CPU if kind == "emulated" else AMX_CPU
    monkeypatch.setattr(precision_mod, "cpu_info", lambda: cpu)
    auto = load_model("rybg/MAE-CellS-ProtS-Pool", cache_dir=tiny_cache, offline=True, device="cpu", precision="auto")
    ref = load_model("rybg/MAE-CellS-ProtS-Pool", cache_dir=tiny_cache, offline=True, device="cpu", precision="fp32")
    assert isinstance(auto.precision_choice, PrecisionChoice)
    assert auto.precision_choice.requested == "auto" and auto.precision_choice.cpu_name == cpu.name
    x = torch.rand(3, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    a, r = auto(x), ref(x)
    if kind == "emulated":
        assert auto.precision == "fp32"
        assert torch.equal(a.embedding, r.embedding) and torch.equal(a.probabilities, r.probabilities)
    else:
        assert auto.precision == "bf16"
        assert not torch.equal(a.embedding, r.embedding)  # bf16 really ran
        assert float(torch.nn.functional.cosine_similarity(a.embedding, r.embedding).min()) >= 0.999
    emb = Embedder("rybg/MAE-CellS-ProtS-Pool", cache_dir=tiny_cache, offline=True, device="cpu")  # default: auto
    assert emb.precision_choice.requested == "auto" and emb.model.precision == auto.precision
    assert emb.precision_choice.to_dict() == auto.precision_choice.to_dict()
    assert Embedder(ref).precision_choice.precision == "fp32"  # a loaded model keeps its own


def test_subcell_model_takes_a_resolved_choice(tiny_cache):
    m = load_model("rybg/MAE-CellS-ProtS-Pool", cache_dir=tiny_cache, offline=True, device="cpu")
    choice = resolve_precision("auto", "cpu", cpu=AVX2_CPU)
    again = SubCellModel(m.net, card=get_model_card("rybg/MAE-CellS-ProtS-Pool"), device="cpu", precision=choice)
    assert again.precision_choice is choice and again.precision == "fp32"
    assert m.precision_choice.requested == "fp32" and m.precision_choice.precision == "fp32"  # load_model default


def test_config_default_is_auto():
    from subcell_screen.config import EmbeddingSection

    field = EmbeddingSection.model_fields["precision"]
    assert field.default == "auto" and "auto" in field.description
    assert EmbeddingSection(precision="auto").precision == "auto"
