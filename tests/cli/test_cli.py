#!/usr/bin/env python3
"""The command line under misuse (issue 11) and options that must take effect (issue 16).

usage: test_cli.py MXMOE_BINARY [--quick]

Every case builds its hostile input on the fly in a temporary folder (copies of the fixtures,
FIFOs, oversized or mistyped configs, poisoned references) and checks the exit code, the message
and the files left behind: errors exit 1 (verify: 2) with a message naming the problem, never a
signal, a hang or a false pass. Concurrency cases run one command several times in parallel on
one output. --quick (the sanitizer build) skips the cases that compute a lot.

Standard library only (no numpy): safetensors files are read and written by hand here.
One line per case, "PASS name" or "FAIL name: why"; exit 1 when any failed.
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")
BIN = os.path.abspath(sys.argv[1])
QUICK = "--quick" in sys.argv[2:]
TMP = tempfile.mkdtemp(prefix="mxm_cli_")
failures = []


def run(*args, timeout=60, **kw):
    """Runs the CLI; returns (rc, stdout, stderr). A timeout is a failure of its own (a hang)."""
    p = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, **kw)
    return p.returncode, p.stdout, p.stderr


def case(fn):
    name = fn.__name__
    t0 = time.time()
    try:
        fn()
        print(f"PASS {name} ({time.time() - t0:.1f} s)", flush=True)
    except subprocess.TimeoutExpired as e:
        failures.append(name)
        print(f"FAIL {name}: hung (no exit within {e.timeout} s): {e.cmd}", flush=True)
    except AssertionError as e:
        failures.append(name)
        print(f"FAIL {name}: {e}", flush=True)
    return fn


def expect(rc_out_err, rc, *needles):
    got, out, err = rc_out_err
    text = out + err
    assert got == rc, f"exit {got}, want {rc}; output:\n{text[-2000:]}"
    for n in needles:
        assert n in text, f"output lacks {n!r}:\n{text[-2000:]}"
    return text


# ---- safetensors by hand ------------------------------------------------------------------------

def st_read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", None)
    base = 8 + n
    return {k: (v["dtype"], v["shape"], b[base + v["data_offsets"][0]:base + v["data_offsets"][1]])
            for k, v in h.items()}, meta


def st_write(path, tensors):
    h, off, blobs = {}, 0, []
    for k, (dt, shape, data) in tensors.items():
        h[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    hb = json.dumps(h).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))


def copy_model(name, dst=None):
    dst = dst or os.path.join(TMP, f"{name}_{len(os.listdir(TMP))}")
    shutil.copytree(os.path.join(DATA, name), dst)
    return dst


def edit_config(d, **kv):
    p = os.path.join(d, "config.json")
    c = json.load(open(p))
    c.update(kv)
    json.dump(c, open(p, "w"), indent=2)


# ---- numeric options, stray arguments ---------------------------------------------------------------

@case
def numeric_options_strict():
    m = os.path.join(DATA, "qwen3_moe_tiny")
    ref = os.path.join(m, "reference.safetensors")
    bad = [
        (["bench", "--tokens", "-5"], "--tokens"), (["bench", "--tokens", "abc"], "--tokens"),
        (["bench", "--tokens", "0"], "--tokens"), (["bench", "--tokens", "1,,4"], "--tokens"),
        (["bench", "--tokens", "4,"], "--tokens"), (["bench", "--tokens", "99999999999999999999"], "--tokens"),
        (["bench", "--shapes", "bogus"], "--shapes"), (["bench", "--shapes", "nano,"], "--shapes"),
        (["bench", "--reps", "0"], "--reps"), (["bench", "--reps", "3x"], "--reps"),
        (["bench", "--threads", "-1"], "--threads"), (["bench", "--threads", " 2"], "--threads"),
        (["demo", "--tokens", "1e3"], "--tokens"), (["demo", "--tokens", "-1"], "--tokens"),
        (["demo", "--threads", "+2"], "--threads"),
        (["run", "--model", m, "--input", ref, "--output", os.path.join(TMP, "o.st"), "--threads", "2x"], "--threads"),
        (["run", "--model", m, "--input", ref, "--output", os.path.join(TMP, "o.st"), "--layer", "-1"], "--layer"),
        (["verify", "--model", m, "--reference", ref, "--tolerance", "nan"], "--tolerance"),
        (["verify", "--model", m, "--reference", ref, "--tolerance", "-0.1"], "--tolerance"),
        (["verify", "--model", m, "--reference", ref, "--tolerance", "0.1x"], "--tolerance"),
        (["verify", "--model", m, "--reference", ref, "--tolerance", "inf"], "--tolerance"),
        (["quantize", m, os.path.join(TMP, "never"), "--threads", "0x"], "--threads"),
    ]
    for args, opt in bad:
        r = run(*args, timeout=20)
        assert r[0] == 1 and opt in r[2], f"{args}: exit {r[0]}, stderr {r[2][-300:]!r}"
    assert not os.path.exists(os.path.join(TMP, "o.st")) and not os.path.exists(os.path.join(TMP, "never"))


@case
def stray_positional_arguments():
    m = os.path.join(DATA, "qwen3_moe_tiny")
    ref = os.path.join(m, "reference.safetensors")
    for args in (["bench", "qwen3"], ["demo", "64"], ["verify", "--model", m, "--reference", ref, "extra"],
                 ["run", "--model", m, "--input", ref, "--output", os.path.join(TMP, "p.st"), "extra"],
                 ["inspect", m, "extra"], ["quantize", m, os.path.join(TMP, "q1"), "extra"]):
        r = run(*args, timeout=20)
        assert r[0] == 1, f"{args}: exit {r[0]}"
        assert "unexpected argument" in r[2] or "give" in r[2], f"{args}: {r[2]!r}"


@case
def help_lists_every_option():
    for cmd, opts in (("demo", ["--tokens", "--act-quant", "--profile", "--threads", "--backend"]),
                      ("bench", ["--act-quant", "--profile", "--threads", "--backend", "--format", "--given-ids", "--no-shared",
                                 "--ref-kernels", "--reps", "--json", "--routing", "--shapes", "--tokens"])):
        out = expect(run(cmd, "--help"), 0)
        for o in opts:
            assert o in out, f"{cmd} --help lacks {o}"
    # options a command does not apply are not accepted
    expect(run("bench", "--quantize", "--tokens", "1"), 1)
    expect(run("demo", "--quantize"), 1)


# ---- bench: every option takes effect and the mode is printed ----------------------------------------

@case
def bench_applies_every_option():
    if QUICK:
        return
    js = os.path.join(TMP, "bench.json")
    out = expect(run("bench", "--shapes", "qwen3", "--tokens", "2", "--reps", "1", "--routing", "skewed",
                     "--act-quant", "none", "--profile", "exact", "--threads", "1", "--ref-kernels",
                     "--given-ids", "--no-shared", "--json", js, timeout=300), 0)
    mode = [l for l in out.splitlines() if l.startswith("mode:")]
    assert mode, "no mode: line"
    for want in ("activations none (weight-only)", "profile exact", "kernels ref", "1 threads", "given ids",
                 "weights mxfp8", "shared expert none"):
        assert want in mode[0], f"mode line {mode[0]!r} lacks {want!r}"
    assert "roofs (same run, 1 threads)" in out
    assert [l for l in out.splitlines() if l.startswith("machine: ") and "1 threads" in l], "no machine: line"
    rows = [l for l in out.splitlines() if l.startswith("qwen3 ")]
    assert len(rows) == 1 and " skewed " in rows[0] and rows[0].split()[2] == "2", rows
    j = json.load(open(js))
    assert j["cpu"] and j["threads"] == 1 and j["results"][0]["act_quant"] == "none" and j["results"][0]["profile"] == "exact", j
    # --no-shared drops Nano's shared expert: named on the mode line and gone from the bytes read
    weights = {}
    for flag in ([], ["--no-shared"]):
        jn = os.path.join(TMP, "bench_nano.json")
        out = expect(run("bench", "--shapes", "nano", "--tokens", "1", "--reps", "1", "--routing", "uniform",
                         "--threads", "2", "--json", jn, *flag, timeout=300), 0)
        mode = [l for l in out.splitlines() if l.startswith("mode:")]
        want = "shared expert none" if flag else "shared expert I=3712"
        assert mode and want in mode[0], f"{flag}: mode line {mode!r} lacks {want!r}"
        weights[bool(flag)] = json.load(open(jn))["results"][0]["weight_gb"]
    assert weights[True] < weights[False], weights


# ---- verify: no false pass, no crash -----------------------------------------------------------------

def poisoned_reference(name, edit):
    t, _ = st_read(os.path.join(DATA, "qwen3_moe_tiny", "reference.safetensors"))
    edit(t)
    p = os.path.join(TMP, name)
    st_write(p, t)
    return p


@case
def verify_rejects_unusable_references():
    m = os.path.join(DATA, "qwen3_moe_tiny")

    def nan_in(key, at):
        def e(t):
            dt, sh, d = t[key]
            t[key] = (dt, sh, d[:4 * at] + struct.pack("<f", float("nan")) + d[4 * at + 4:])
        return e

    def inf_in(t):
        dt, sh, d = t["y32_64"]
        t["y32_64"] = (dt, sh, struct.pack("<f", float("inf")) + d[4:])

    def zero_nan(t):  # a NaN whose denominator would be NaN: used to count as error 0
        dt, sh, d = t["y32_7"]
        t["y32_7"] = (dt, sh, struct.pack("<f", float("nan")) * (len(d) // 4))

    def i32_y32(t):
        dt, sh, d = t["y32_7"]
        t["y32_7"] = ("I32", sh, d)

    def bf16_ids(t):
        k = [k for k in t if k.startswith("topk_ids")][0]
        dt, sh, d = t[k]
        t[k] = ("BF16", sh, d[:len(d) // 2])

    def short_y(t):
        dt, sh, d = t["y32_64"]
        t["y32_64"] = (dt, [32, sh[1]], d[:len(d) // 2])

    def no_y(t):
        for k in [k for k in t if k.startswith("y") and k.endswith("_1")]:
            del t[k]

    for label, edit, needle in (("nan", nan_in("y32_64", 77), "finite"), ("inf", inf_in, "finite"),
                                ("allnan", zero_nan, "finite"), ("i32", i32_y32, "supported: F32,BF16"),
                                ("ids_bf16", bf16_ids, "supported: I32,I64"), ("short", short_y, "must be ["),
                                ("no_y", no_y, "neither")):
        p = poisoned_reference(f"ref_{label}.safetensors", edit)
        r = run("verify", "--model", m, "--reference", p)
        assert r[0] == 2, f"{label}: exit {r[0]} (a pass or a crash):\n{(r[1] + r[2])[-800:]}"
        assert needle in r[2], f"{label}: {r[2]!r} lacks {needle!r}"
        assert "passed" not in r[1], f"{label}: says passed"


@case
def verify_defaults_follow_the_weights():
    # BF16 checkpoints run in the reference mode by default (README), and pass their own fixture
    for fam in ("qwen3_moe", "nemotron_h", "deepseek_v3"):
        m = os.path.join(DATA, f"{fam}_tiny")
        out = expect(run("verify", "--model", m, "--reference", os.path.join(m, "reference.safetensors")), 0,
                     "act-quant none", "passed")
    out = expect(run("verify", "--model", os.path.join(DATA, "qwen3_moe_tiny_mxfp8"), "--reference",
                     os.path.join(DATA, "qwen3_moe_tiny_mxfp8", "reference.safetensors")), 0, "act-quant mxfp8")


# ---- inspect / run agree with the loader ---------------------------------------------------------------

@case
def inspect_reports_the_tensors_format():
    d = copy_model("nemotron_h_tiny")
    shutil.copy(os.path.join(DATA, "nemotron_h_tiny_mxfp8", "hf_quant_config.json"), d)
    out = run("inspect", d)[1]
    assert "expert weights: bf16" in out, out
    out = expect(run("inspect", os.path.join(DATA, "nemotron_h_tiny_mxfp8")), 0, "expert weights: mxfp8")


@case
def qwen_shared_expert_rejected_in_inspect_and_run():
    d = copy_model("qwen3_moe_tiny")
    edit_config(d, shared_expert_intermediate_size=128)
    for args in (["inspect", d], ["run", "--model", d, "--input", os.path.join(d, "reference.safetensors"),
                                  "--output", os.path.join(TMP, "shared.st")],
                 ["verify", "--model", d, "--reference", os.path.join(d, "reference.safetensors")]):
        r = run(*args)
        assert r[0] == 1, f"{args[0]}: exit {r[0]}"
        assert "shared_expert_intermediate_size" in r[2] and "not supported" in r[2], r[2]


@case
def config_values_validated_at_load():
    cases = [
        ("qwen3_moe_tiny", {"num_experts_per_tok": True}, "num_experts_per_tok"),
        ("qwen3_moe_tiny", {"num_experts_per_tok": "4"}, "num_experts_per_tok"),
        ("qwen3_moe_tiny", {"num_local_experts": 16.0}, "num_local_experts"),
        ("qwen3_moe_tiny", {"norm_topk_prob": "yes"}, "norm_topk_prob"),
        ("qwen3_moe_tiny", {"model_type": 5}, "model_type"),
        ("deepseek_v3_tiny", {"routed_scaling_factor": "2.5"}, "routed_scaling_factor"),
        ("deepseek_v3_tiny", {"routed_scaling_factor": -2.5}, "routed_scaling_factor"),
        ("deepseek_v3_tiny", {"routed_scaling_factor": 1e30}, "routed_scaling_factor"),
        ("deepseek_v3_tiny", {"n_group": 3}, "config.json"),
        ("deepseek_v3_tiny", {"n_group": 2, "topk_group": 3}, "topk_group"),
        ("nemotron_h_tiny", {"mlp_hidden_act": 5}, "mlp_hidden_act"),
    ]
    for fam, kv, needle in cases:
        d = copy_model(fam)
        edit_config(d, **kv)
        for args in (["inspect", d], ["verify", "--model", d, "--reference", os.path.join(d, "reference.safetensors")]):
            r = run(*args)
            assert r[0] == 1, f"{kv} {args[0]}: exit {r[0]}\n{r[1][-500:]}"
            assert needle in r[2], f"{kv} {args[0]}: {r[2]!r} lacks {needle!r}"


@case
def config_files_fifo_and_size():
    for fname in ("config.json", "hf_quant_config.json"):
        d = copy_model("qwen3_moe_tiny")
        p = os.path.join(d, fname)
        if os.path.exists(p):
            os.unlink(p)
        os.mkfifo(p)
        for args in (["inspect", d], ["run", "--model", d, "--input", os.path.join(d, "reference.safetensors"),
                                      "--output", os.path.join(TMP, "fifo.st")],
                     ["verify", "--model", d, "--reference", os.path.join(d, "reference.safetensors")]):
            r = run(*args, timeout=10)
            assert r[0] == 1 and "regular file" in r[2], f"{fname} {args[0]}: exit {r[0]} {r[2]!r}"
    d = copy_model("qwen3_moe_tiny")
    with open(os.path.join(d, "config.json"), "a") as f:
        f.write(" " * (60 << 20))
    t0 = time.time()
    r = run("inspect", d, timeout=10)
    assert r[0] == 1 and "limit" in r[2], r
    assert time.time() - t0 < 3, f"a 60 MB config took {time.time() - t0:.1f} s"


@case
def infinity_in_config_loads_and_quantizes_validly():
    d = copy_model("nemotron_h_tiny")
    p = os.path.join(d, "config.json")
    text = open(p).read().rstrip().rstrip("}")
    open(p, "w").write(text + ',\n  "python_limits": [0.0, Infinity, -Infinity, NaN]\n}\n')
    expect(run("inspect", d), 0, "family: nemotron_h")
    out = os.path.join(TMP, "inf_q")
    expect(run("quantize", d, out), 0)

    def strict(c):
        raise ValueError(f"not JSON: {c}")
    c = json.loads(open(os.path.join(out, "config.json")).read(), parse_constant=strict)
    assert c["python_limits"][1] == float("inf") and c["python_limits"][3] is None, c["python_limits"]
    expect(run("inspect", out), 0, "expert weights: mxfp8")


# ---- quantize: one run per folder ------------------------------------------------------------------------

@case
def quantize_refuses_non_empty_output():
    src = os.path.join(DATA, "qwen3_moe_tiny")
    out = os.path.join(TMP, "q_nonempty")
    os.makedirs(out)
    old = os.path.join(out, "model.safetensors.index.json")
    open(old, "w").write('{"weight_map": {}}')
    expect(run("quantize", src, out), 1, "not empty")
    assert os.listdir(out) == ["model.safetensors.index.json"], os.listdir(out)
    os.unlink(old)
    expect(run("quantize", src, out), 0)  # an empty folder is used
    expect(run("verify", "--model", out, "--reference", os.path.join(DATA, "qwen3_moe_tiny_mxfp8", "reference.safetensors")), 0)
    expect(run("quantize", src, out), 1, "not empty")  # and a second run into it is refused
    assert not [n for n in os.listdir(TMP) if ".tmp." in n], os.listdir(TMP)


@case
def quantize_experts_only_same_output_rules():
    # --experts-only (the *_mxfp8 layout) follows the same one-run-per-folder rules as the default
    src = os.path.join(DATA, "qwen3_moe_tiny")
    out = os.path.join(TMP, "q_experts")
    expect(run("quantize", "--experts-only", src, out), 0)
    got = open(os.path.join(out, "model.safetensors"), "rb").read()
    assert got == open(os.path.join(DATA, "qwen3_moe_tiny_mxfp8", "model.safetensors"), "rb").read(), \
        "--experts-only differs from the *_mxfp8 twin"
    expect(run("quantize", "--experts-only", src, out), 1, "not empty")
    assert not [n for n in os.listdir(TMP) if ".tmp." in n], os.listdir(TMP)
    expect(run("quantize", "--help"), 0, "--experts-only", "OUT_DIR must not exist")


@case
def quantize_ignores_stray_temporaries():
    d = copy_model("qwen3_moe_tiny")
    open(os.path.join(d, "config.json.tmp"), "w").write('{"model_type": "junk"}')
    open(os.path.join(d, "model.safetensors.tmp"), "w").write("junk")
    out = os.path.join(TMP, "q_stray")
    expect(run("quantize", d, out), 0)
    c = json.load(open(os.path.join(out, "config.json")))
    assert c["model_type"] == "qwen3_moe" and c["quantization_config"]["quant_algo"] == "MXFP8", c
    expect(run("inspect", out), 0, "expert weights: mxfp8")


@case
def quantize_concurrent_same_output():
    src = os.path.join(DATA, "deepseek_v3_tiny")
    out = os.path.join(TMP, "q_race")
    ps = [subprocess.Popen([BIN, "quantize", src, out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(4)]
    rcs = [p.wait(timeout=120) for p in ps]
    assert rcs.count(0) >= 1 and all(rc in (0, 1) for rc in rcs), rcs
    for p, rc in zip(ps, rcs):
        err = p.stderr.read()
        assert rc == 0 or "not empty" in err or "another writer" in err, err
    expect(run("verify", "--model", out, "--reference", os.path.join(DATA, "deepseek_v3_tiny_mxfp8", "reference.safetensors")), 0)
    assert sorted(os.listdir(out)) == sorted(os.listdir(os.path.join(DATA, "deepseek_v3_tiny_mxfp8"))) or \
        "model.safetensors" in os.listdir(out)
    assert not [n for n in os.listdir(TMP) if ".tmp." in n], os.listdir(TMP)


def big_bf16_checkpoint(d, experts=16, H=1024, I=1024):
    """A qwen3_moe BF16 checkpoint of about experts * 6 MB: quantizing it takes long enough to be
    interrupted."""
    os.makedirs(d)
    json.dump({"model_type": "qwen3_moe", "hidden_size": H, "moe_intermediate_size": I, "num_experts": experts,
               "num_experts_per_tok": 2, "norm_topk_prob": True}, open(os.path.join(d, "config.json"), "w"))
    blob = bytes(range(7, 256, 3)) * ((2 * H * I) // 83 + 1)
    t = {"model.layers.0.mlp.gate.weight": ("BF16", [experts, H], blob[:2 * experts * H])}
    for e in range(experts):
        for n, sh in (("gate_proj", [I, H]), ("up_proj", [I, H]), ("down_proj", [H, I])):
            t[f"model.layers.0.mlp.experts.{e}.{n}.weight"] = ("BF16", sh, blob[:2 * H * I])
    st_write(os.path.join(d, "model.safetensors"), t)


@case
def quantize_interrupted_leaves_nothing():
    if QUICK:
        return
    src = os.path.join(TMP, "big_bf16")
    big_bf16_checkpoint(src)
    interrupted = 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = os.path.join(TMP, f"q_int_{sig}")
        p = subprocess.Popen([BIN, "quantize", src, out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        # signal once writing has begun (a staging folder, or any output at all)
        while not [n for n in os.listdir(TMP) if ".tmp." in n or n.startswith("q_int_")] and p.poll() is None \
                and time.time() - t0 < 30:
            time.sleep(0.002)
        p.send_signal(sig)
        rc = p.wait(timeout=60)
        left = [n for n in os.listdir(TMP) if ".tmp." in n]
        assert not left, f"staging left after signal {sig}: {left}"
        if rc == 0:  # finished before the signal took effect: then complete, with no temporaries
            expect(run("inspect", out), 0, "expert weights: mxfp8")
            assert not [n for n in os.listdir(out) if "tmp" in n], os.listdir(out)
        else:
            interrupted += 1
            assert rc == 128 + sig, f"exit {rc} after signal {sig}: {p.stderr.read()[-500:]}"
            assert not os.path.exists(out), f"{out} left: {os.listdir(out)}"
    assert interrupted, "no run was interrupted (it finished first): the case tested nothing"


# ---- run -------------------------------------------------------------------------------------------------------

@case
def run_checks_output_before_computing():
    m = os.path.join(DATA, "qwen3_moe_tiny")
    ref = os.path.join(m, "reference.safetensors")
    for out, needle in ((os.path.join(TMP, "no_such_dir", "o.st"), "does not exist"), (TMP, "not a regular file")):
        r = run("run", "--model", m, "--input", ref, "--output", out)
        assert r[0] == 1 and needle in r[2], r
        assert "loading layer" not in r[2], f"computed before checking the output: {r[2]!r}"


@case
def run_input_naming_rule():
    m = os.path.join(DATA, "qwen3_moe_tiny")
    t, _ = st_read(os.path.join(m, "reference.safetensors"))
    x = t["x_7"]
    inp = os.path.join(TMP, "names.safetensors")
    st_write(inp, {"x_a": x, "xylophone": x, "x": x, "extra": x})
    out = os.path.join(TMP, "names_out.safetensors")
    expect(run("run", "--model", m, "--input", inp, "--output", out), 0)
    names = set(st_read(out)[0])
    assert names == {"y_a", "yr_a", "ids_a", "w_a", "y", "yr", "ids", "w"}, names
    # verify follows the same rule: a reference with only "xylophone" has no input
    st_write(inp, {"xylophone": x, "y32ylophone": t["y32_7"]})
    expect(run("verify", "--model", m, "--reference", inp), 2, "no tensor named x")


@case
def run_concurrent_same_output():
    m = os.path.join(DATA, "qwen3_moe_tiny")
    t, _ = st_read(os.path.join(m, "reference.safetensors"))
    dt, sh, d = t["x_64"]
    solo, procs = [], []
    for i in range(4):  # four different inputs (x with a different row order each)
        rows = [d[r * sh[1] * 2:(r + 1) * sh[1] * 2] for r in range(sh[0])]
        rows = rows[i:] + rows[:i]
        inp = os.path.join(TMP, f"race_in{i}.safetensors")
        st_write(inp, {"x_64": (dt, sh, b"".join(rows))})
        so = os.path.join(TMP, f"race_solo{i}.safetensors")
        expect(run("run", "--model", m, "--input", inp, "--output", so, "--threads", "1"), 0)
        solo.append(open(so, "rb").read())
    out = os.path.join(TMP, "race_out.safetensors")
    for rep in range(3):
        procs = [subprocess.Popen([BIN, "run", "--model", m, "--input", os.path.join(TMP, f"race_in{i}.safetensors"),
                                   "--output", out, "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for i in range(4)]
        rcs = [p.wait(timeout=60) for p in procs]
        assert rcs == [0, 0, 0, 0], rcs
        assert open(out, "rb").read() in solo, "the output mixes the writers' data"
    assert not [n for n in os.listdir(TMP) if n.startswith("race_out.safetensors.")], os.listdir(TMP)


@case
def run_progress_on_long_inputs():
    if QUICK:
        return
    m = os.path.join(DATA, "qwen3_moe_tiny")
    t, _ = st_read(os.path.join(m, "reference.safetensors"))
    dt, sh, d = t["x_64"]
    T = 20000
    inp = os.path.join(TMP, "long.safetensors")
    st_write(inp, {"x_long": (dt, [T, sh[1]], (d * (T // 64 + 1))[:T * sh[1] * 2])})
    out = os.path.join(TMP, "long_out.safetensors")
    err = expect(run("run", "--model", m, "--input", inp, "--output", out, timeout=300), 0, f"of {T} tokens")
    # the chunked run gives the results of one call per chunk: row 64 + r equals row r (same x)
    y = st_read(out)[0]["y_long"][2]
    row = sh[1] * 2
    assert y[:64 * row] == y[64 * row:128 * row] and y[:64 * row] == y[8192 * row:8256 * row], "chunks differ"


shutil.rmtree(TMP, ignore_errors=True)
print(f"{'FAILED: ' + ', '.join(failures) if failures else 'all passed'}")
sys.exit(1 if failures else 0)
