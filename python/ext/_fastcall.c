/* mxmoe._fastcall: the per-call work of the Python short path in C, for CPU sites.
 *
 * python/mxmoe/_flashinfer.py describes the short path: a _Site (per prepared layer and thread)
 * holds the plan, the mxm_moe_inputs / mxm_moe_outputs structs (ctypes objects) and what a call
 * must check; _fast() checks the per-call tensors, allocates the output, patches the structs and
 * calls mxm_moe_forward, or returns None so that the caller takes the full path (which raises the
 * exceptions). _Site subclasses Site when this module imports; Site.call() does what _fast() does,
 * with the same outcome for every input (python/tests/test_fastcall.py compares the two), from the
 * description _Site hands over once: the structs, H, E, the scales' geometry and the dtype tables.
 * What it saves is the interpreter: on numpy arrays it reads the array struct's fields (numpy's
 * headers, for the layout only: no numpy C API is called), on torch tensors it reads the same
 * attributes and calls the same methods as _fast(), through torch.Tensor's descriptors looked up
 * once (by name on other types, e.g. nn.Parameter weights). The library is called through the
 * address of the mxm_moe_forward that ctypes loaded (the extension does not link libmxmoe:
 * MXMOE_LIBRARY may name another build), with the GIL released around it. CUDA sites are not set up
 * here: their calls go to _fast(). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/ndarraytypes.h>

#include <stdint.h>

#include "mxmoe.h"

typedef mxm_status (*forward_fn)(mxm_moe_plan *, const mxm_moe_weights *, const mxm_moe_inputs *,
                                 const mxm_moe_outputs *, void *, int64_t, void *);
_Static_assert(_Generic(&mxm_moe_forward, forward_fn : 1, default : 0), "mxm_moe_forward's type");

/* Set once by setup(): the library's forward, _fast() (for sites not set up here), MxmError, and
 * numpy's ndarray type, np.empty, the bf16 dtype and the dtype tables of _flashinfer. */
static forward_fn g_forward;
static PyObject *g_python_path, *g_error, *g_empty, *g_bf16, *g_np_fast, *g_np_fp8, *g_u8, *g_f32,
    *g_ndarray;
static PyObject *s_empty_kw;

typedef struct {
    PyObject_HEAD int ready; /* set up by c_init (a CPU site); else call() goes to _fast() */
    mxm_moe_inputs *inp;
    mxm_moe_outputs *outs;
    const mxm_moe_weights *mw;
    PyObject *keep; /* the ctypes objects behind inp, outs and mw */
    long long H, E, nsc, max_tokens;
    int mx, xst;
    mxm_moe_plan *plan;
    void *ws;
    long long ws_bytes;
    PyObject *meta; /* the function's site: what its weights are compared with (_add_fn_site) */
    /* torch: Tensor, dtype tables, uint8, float32, empty_like, bfloat16, contiguous_format, the
     * site's device (each NULL without torch) */
    PyObject *ttype, *tdt, *tfp8, *tu8, *tf32, *tempty, *tbf16, *tcf, *tdev;
} Site;

/* ---- small helpers: each returns 1 (yes), 0 (no) or -1 (a Python exception is set) ---------- */

/* table.get(key): its int value, -1 when absent, -2 on error */
static long dtype_code(PyObject *table, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(table, key);
    if (v == NULL) return PyErr_Occurred() ? -2 : -1;
    return PyLong_AsLong(v);
}

/* obj (a tuple, torch.Size included) == (a,) or (a, b) (n = 1 or 2) */
static int tuple_is(PyObject *obj, Py_ssize_t n, long long a, long long b) {
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != n) return 0;
    const long long want[2] = {a, b};
    for (Py_ssize_t i = 0; i < n; i++) {
        int overflow;
        const long long v = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(obj, i), &overflow);
        if (v == -1 && PyErr_Occurred()) return -1;
        if (overflow || v != want[i]) return 0;
    }
    return 1;
}

/* a numpy array's dims == the tuple shp (of ints) */
static int dims_are(PyArrayObject *a, PyObject *shp) {
    const int nd = PyArray_NDIM(a);
    if (!PyTuple_Check(shp) || PyTuple_GET_SIZE(shp) != nd) return 0;
    const npy_intp *d = PyArray_DIMS(a);
    for (int i = 0; i < nd; i++) {
        int overflow;
        const long long v = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(shp, i), &overflow);
        if (v == -1 && PyErr_Occurred()) return -1;
        if (overflow || v != (long long)d[i]) return 0;
    }
    return 1;
}

/* torch.Tensor's descriptors of the names below, looked up once (c_init): on a tensor of exactly
 * that type, obj.<name> is the descriptor's __get__ (all are data descriptors or methods of the
 * C base, found here as Python would find them), without the lookup per call */
enum {
    N_SHAPE,
    N_DTYPE,
    N_IS_CPU,
    N_DEVICE,
    N_IS_CONTIGUOUS,
    N_DATA_PTR,
    N_NUMEL,
    N_PLAN_FOR,
    N_NAMES
};
static PyObject *g_names[N_NAMES], *g_tensor, *g_tdescr[N_NAMES];

static PyObject *getattr_n(PyObject *obj, int n) {
    if ((PyObject *)Py_TYPE(obj) == g_tensor && g_tdescr[n] != NULL)
        return Py_TYPE(g_tdescr[n])->tp_descr_get(g_tdescr[n], obj, g_tensor);
    return PyObject_GetAttr(obj, g_names[n]);
}

static PyObject *method0(PyObject *obj, int n) {
    if ((PyObject *)Py_TYPE(obj) == g_tensor && g_tdescr[n] != NULL)
        return PyObject_Vectorcall(g_tdescr[n], &obj, 1, NULL);
    PyObject *args[1] = {obj};
    return PyObject_VectorcallMethod(g_names[n], args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* bool(obj.<name>) (attr) or bool(obj.<name>()) */
static int truth(PyObject *obj, int name, int call) {
    PyObject *v = call ? method0(obj, name) : getattr_n(obj, name);
    if (v == NULL) return -1;
    const int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* obj.<name> == want (or, with identity, obj.<name> is want) */
static int attr_eq(PyObject *obj, int name, PyObject *want, int identity) {
    PyObject *v = getattr_n(obj, name);
    if (v == NULL) return -1;
    const int r = identity ? v == want : PyObject_RichCompareBool(v, want, Py_EQ);
    Py_DECREF(v);
    return r;
}

/* a torch tensor's data_ptr(), or NULL with an exception */
static void *data_ptr(PyObject *t, int *err) {
    PyObject *v = method0(t, N_DATA_PTR);
    if (v == NULL) {
        *err = 1;
        return NULL;
    }
    void *p = PyLong_AsVoidPtr(v);
    Py_DECREF(v);
    if (p == NULL && PyErr_Occurred()) *err = 1;
    return p;
}

/* ---- the function's weights: _unchanged() of _flashinfer ------------------------------------- */

/* o.shape == shp */
static int shape_is(PyObject *o, PyObject *shp) {
    if ((PyObject *)Py_TYPE(o) == g_ndarray) return dims_are((PyArrayObject *)o, shp);
    return attr_eq(o, N_SHAPE, shp, 0);
}

/* o.dtype is dt */
static int dtype_is(PyObject *o, PyObject *dt) {
    if ((PyObject *)Py_TYPE(o) == g_ndarray)
        return (PyObject *)PyArray_DESCR((PyArrayObject *)o) == dt;
    return attr_eq(o, N_DTYPE, dt, 1);
}

/* The weights w (w1, s1, w2, s2, alpha, beta, clamp_limit) against meta: shapes m[0:4] and dtype
 * objects m[4:8] of the four weights; m[8] None or ((i, data pointer), ...) of the torch ones;
 * m[9] None or ((i, shape, dtype), ...) of the SwiGLU-OAI arrays given. */
static int weights_unchanged(const Site *s, PyObject *const *w) {
    PyObject *m = s->meta;
    if (m == NULL || !PyTuple_Check(m) || PyTuple_GET_SIZE(m) != 10) return 0;
    for (int i = 0; i < 4; i++) {
        int r = shape_is(w[i], PyTuple_GET_ITEM(m, i));
        if (r == 1) r = dtype_is(w[i], PyTuple_GET_ITEM(m, 4 + i));
        if (r != 1) return r;
    }
    PyObject *oa = PyTuple_GET_ITEM(m, 9), *ptrs = PyTuple_GET_ITEM(m, 8);
    for (Py_ssize_t k = 0; oa != Py_None && k < PyTuple_GET_SIZE(oa); k++) {
        PyObject *e = PyTuple_GET_ITEM(oa, k);
        const Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(e, 0));
        if (i < 0 || i > 6) return i == -1 && PyErr_Occurred() ? -1 : 0;
        int r = shape_is(w[i], PyTuple_GET_ITEM(e, 1));
        if (r == 1) r = dtype_is(w[i], PyTuple_GET_ITEM(e, 2));
        if (r != 1) return r;
    }
    for (Py_ssize_t k = 0; ptrs != Py_None && k < PyTuple_GET_SIZE(ptrs); k++) {
        PyObject *e = PyTuple_GET_ITEM(ptrs, k);
        const Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(e, 0));
        if (i < 0 || i > 6) return i == -1 && PyErr_Occurred() ? -1 : 0;
        PyObject *p = method0(w[i], N_DATA_PTR);
        if (p == NULL) return -1;
        const int r = PyObject_RichCompareBool(p, PyTuple_GET_ITEM(e, 1), Py_EQ);
        Py_DECREF(p);
        if (r != 1) return r;
    }
    return 1;
}

/* ---- the per-call tensors ------------------------------------------------------------------- */

typedef struct {
    long long T;
    const void *x, *lg, *bias, *xsc;
    long xd, ld, bd;
    void *out_ptr;
} Call;

/* 1: c filled and *out made; 0: the full path; -1: an exception */
static int check_numpy(const Site *s, PyObject *x, PyObject *lg, PyObject *bias, PyObject *xsc,
                       Call *c, PyObject **out) {
    if ((PyObject *)Py_TYPE(lg) != g_ndarray) return 0;
    PyArrayObject *xa = (PyArrayObject *)x, *la = (PyArrayObject *)lg;
    c->xd = dtype_code(xsc == Py_None ? g_np_fast : g_np_fp8, (PyObject *)PyArray_DESCR(xa));
    c->ld = dtype_code(g_np_fast, (PyObject *)PyArray_DESCR(la));
    if (c->xd == -2 || c->ld == -2) return -1;
    if (c->xd < 0 || c->ld < 0 || PyArray_NDIM(xa) != 2 || PyArray_DIMS(xa)[1] != s->H) return 0;
    c->T = PyArray_DIMS(xa)[0];
    if (PyArray_NDIM(la) != 2 || PyArray_DIMS(la)[0] != c->T || PyArray_DIMS(la)[1] != s->E ||
        !c->T || !PyArray_IS_C_CONTIGUOUS(xa) || !PyArray_IS_C_CONTIGUOUS(la))
        return 0;
    c->xsc = NULL;
    if (xsc != Py_None) { /* MxFp8: uint8 of T * H/32 elements; DeepSeekFp8: float32 [H/128, T] */
        PyArrayObject *sa = (PyArrayObject *)xsc;
        if ((PyObject *)Py_TYPE(xsc) != g_ndarray || !PyArray_IS_C_CONTIGUOUS(sa)) return 0;
        PyObject *dt = (PyObject *)PyArray_DESCR(sa);
        const int r = dt == (s->mx ? g_u8 : g_f32)
                          ? 1
                          : PyObject_RichCompareBool(dt, s->mx ? g_u8 : g_f32, Py_EQ);
        if (r != 1) return r;
        if (s->mx) {
            long long n = 1;
            for (int i = 0; i < PyArray_NDIM(sa); i++)
                n *= PyArray_DIMS(sa)[i];
            if (n != c->T * s->nsc) return 0;
        } else if (PyArray_NDIM(sa) != 2 || PyArray_DIMS(sa)[0] != s->nsc ||
                   PyArray_DIMS(sa)[1] != c->T) {
            return 0;
        }
        c->xsc = PyArray_DATA(sa);
    }
    c->bias = NULL;
    c->bd = 0;
    if (bias != Py_None) {
        PyArrayObject *ba = (PyArrayObject *)bias;
        if ((PyObject *)Py_TYPE(bias) != g_ndarray || PyArray_NDIM(ba) != 1 ||
            PyArray_DIMS(ba)[0] != s->E || !PyArray_IS_C_CONTIGUOUS(ba))
            return 0;
        c->bd = dtype_code(g_np_fast, (PyObject *)PyArray_DESCR(ba));
        if (c->bd < 0) return c->bd == -2 ? -1 : 0;
        c->bias = PyArray_DATA(ba);
    }
    PyObject *args[2] = {Py_BuildValue("(LL)", c->T, s->H), g_bf16};
    if (args[0] == NULL) return -1;
    *out = PyObject_Vectorcall(g_empty, args, 2, NULL);
    Py_DECREF(args[0]);
    if (*out == NULL) return -1;
    c->x = PyArray_DATA(xa);
    c->lg = PyArray_DATA(la);
    c->out_ptr = PyArray_DATA((PyArrayObject *)*out);
    return 1;
}

/* torch.dtype of t looked up in table: 0 ok (*code, -1 when absent), -1 error */
static int torch_code(PyObject *table, PyObject *t, long *code) {
    PyObject *dt = getattr_n(t, N_DTYPE);
    if (dt == NULL) return -1;
    *code = dtype_code(table, dt);
    Py_DECREF(dt);
    return *code == -2 ? -1 : 0;
}

static int check_torch_body(const Site *s, PyObject *x, PyObject *lg, PyObject *bias, PyObject *xsc,
                            Call *c, PyObject *xs) {
    int r;
    if (!PyTuple_Check(xs) || PyTuple_GET_SIZE(xs) != 2) return 0;
    const long long h = PyLong_AsLongLong(PyTuple_GET_ITEM(xs, 1));
    if (h == -1 && PyErr_Occurred()) return -1;
    if (h != s->H) return 0;
    c->T = PyLong_AsLongLong(PyTuple_GET_ITEM(xs, 0));
    if (c->T == -1 && PyErr_Occurred()) return -1;
    PyObject *ls = getattr_n(lg, N_SHAPE);
    if (ls == NULL) return -1;
    r = tuple_is(ls, 2, c->T, s->E);
    Py_DECREF(ls);
    if (r != 1) return r;
    if (!c->T) return 0;
    if ((r = truth(x, N_IS_CPU, 0)) != 1 || (r = truth(lg, N_IS_CPU, 0)) != 1) return r;
    if ((r = truth(x, N_IS_CONTIGUOUS, 1)) != 1 || (r = truth(lg, N_IS_CONTIGUOUS, 1)) != 1)
        return r;
    c->xsc = NULL;
    if (xsc != Py_None) {
        if (Py_TYPE(xsc) != (PyTypeObject *)s->ttype) return 0;
        if ((r = attr_eq(xsc, N_DEVICE, s->tdev, 0)) != 1 ||
            (r = truth(xsc, N_IS_CONTIGUOUS, 1)) != 1)
            return r;
        if ((r = attr_eq(xsc, N_DTYPE, s->mx ? s->tu8 : s->tf32, 1)) != 1) return r;
        if (s->mx) {
            PyObject *n = method0(xsc, N_NUMEL);
            if (n == NULL) return -1;
            const long long v = PyLong_AsLongLong(n);
            Py_DECREF(n);
            if (v == -1 && PyErr_Occurred()) return -1;
            if (v != c->T * s->nsc) return 0;
        } else {
            PyObject *ss = getattr_n(xsc, N_SHAPE);
            if (ss == NULL) return -1;
            r = tuple_is(ss, 2, s->nsc, c->T);
            Py_DECREF(ss);
            if (r != 1) return r;
        }
        int err = 0;
        c->xsc = data_ptr(xsc, &err);
        if (err) return -1;
    }
    c->bias = NULL;
    c->bd = 0;
    if (bias != Py_None) {
        if (Py_TYPE(bias) != (PyTypeObject *)s->ttype) return 0;
        PyObject *bs = getattr_n(bias, N_SHAPE);
        if (bs == NULL) return -1;
        r = tuple_is(bs, 1, s->E, 0);
        Py_DECREF(bs);
        if (r != 1) return r;
        if ((r = attr_eq(bias, N_DEVICE, s->tdev, 0)) != 1 ||
            (r = truth(bias, N_IS_CONTIGUOUS, 1)) != 1)
            return r;
        if (torch_code(s->tdt, bias, &c->bd)) return -1;
        if (c->bd < 0) {
            c->bd = 0;
            return 0;
        }
        int err = 0;
        c->bias = data_ptr(bias, &err);
        if (err) return -1;
    }
    return 1;
}

static int check_torch(const Site *s, PyObject *x, PyObject *lg, PyObject *bias, PyObject *xsc,
                       Call *c, PyObject **out) {
    if (Py_TYPE(lg) != (PyTypeObject *)s->ttype) return 0;
    if (torch_code(xsc == Py_None ? s->tdt : s->tfp8, x, &c->xd) || torch_code(s->tdt, lg, &c->ld))
        return -1;
    PyObject *xs = getattr_n(x, N_SHAPE);
    if (xs == NULL) return -1;
    int r = c->xd < 0 || c->ld < 0 ? 0 : check_torch_body(s, x, lg, bias, xsc, c, xs);
    Py_DECREF(xs);
    if (r != 1) return r;
    /* x's shape and device (faster than torch.empty) */
    PyObject *args[3] = {x, s->tbf16, s->tcf};
    *out = PyObject_Vectorcall(s->tempty, args, 1, s_empty_kw);
    if (*out == NULL) return -1;
    int err = 0;
    c->x = data_ptr(x, &err);
    if (!err) c->lg = data_ptr(lg, &err);
    if (!err) c->out_ptr = data_ptr(*out, &err);
    if (err) {
        Py_CLEAR(*out);
        return -1;
    }
    return 1;
}

/* Site.call(x, lg, bias, xsc[, w1, s1, w2, s2, alpha, beta, clamp_limit]): _fast() */
static PyObject *site_call(Site *s, PyObject *const *args, Py_ssize_t n) {
    if (n != 4 && n != 11) {
        PyErr_SetString(PyExc_TypeError, "Site.call takes 4 or 11 arguments");
        return NULL;
    }
    if (!s->ready) { /* a CUDA site: _fast(site, *args) */
        PyObject *a[12] = {(PyObject *)s};
        for (Py_ssize_t i = 0; i < n; i++)
            a[i + 1] = args[i];
        return PyObject_Vectorcall(g_python_path, a, n + 1, NULL);
    }
    if (n == 11) {
        const int r = weights_unchanged(s, args + 4);
        if (r < 0) return NULL;
        if (r == 0) Py_RETURN_NONE;
    }
    PyObject *x = args[0], *out = NULL;
    Call c;
    int r = 0;
    if ((PyObject *)Py_TYPE(x) == g_ndarray)
        r = check_numpy(s, x, args[1], args[2], args[3], &c, &out);
    else if (s->ttype != NULL && Py_TYPE(x) == (PyTypeObject *)s->ttype)
        r = check_torch(s, x, args[1], args[2], args[3], &c, &out);
    if (r < 0) return NULL;
    if (r == 0) Py_RETURN_NONE;
    if (c.T > s->max_tokens) { /* a larger plan: _Site.plan_for(T) sets it here (c_plan) */
        PyObject *t = PyLong_FromLongLong(c.T),
                 *v = t ? PyObject_CallMethodOneArg((PyObject *)s, g_names[N_PLAN_FOR], t) : NULL;
        Py_XDECREF(t);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(v);
    }
    mxm_moe_inputs *in = s->inp;
    in->num_tokens = c.T, in->x = c.x, in->x_dtype = (int32_t)c.xd, in->router_logits = c.lg;
    in->logits_dtype = (int32_t)c.ld, in->routing_bias = c.bias, in->bias_dtype = (int32_t)c.bd;
    in->x_scale = c.xsc, in->x_scale_transposed = c.xsc ? s->xst : 0;
    s->outs->out = c.out_ptr;
    PyThreadState *ts = PyEval_SaveThread(); /* the GIL is released around the forward */
    const mxm_status st = g_forward(s->plan, s->mw, in, s->outs, s->ws, (int64_t)s->ws_bytes, NULL);
    PyEval_RestoreThread(ts);
    if (st != MXM_OK) {
        Py_DECREF(out);
        PyObject *e = PyObject_CallFunction(g_error, "is", (int)st, "mxm_moe_forward");
        if (e != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(e), e);
            Py_DECREF(e);
        }
        return NULL;
    }
    return out;
}

/* ---- set-up --------------------------------------------------------------------------------- */

/* the address of a ctypes struct of the given size (its buffer), kept alive by s->keep */
static void *struct_at(PyObject *obj, Py_ssize_t size, const char *what) {
    Py_buffer b;
    if (PyObject_GetBuffer(obj, &b, PyBUF_SIMPLE)) return NULL;
    void *p = b.buf;
    const Py_ssize_t len = b.len;
    PyBuffer_Release(&b);
    if (len != size) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, mxmoe.h says %zd", what, len, size);
        return NULL;
    }
    return p;
}

/* c_init(inp, outs, mw, H, E, nsc, mx, xst, torch): torch None or (Tensor, dtype table, FP8
 * table, uint8, float32, empty_like, bfloat16, contiguous_format, device) */
static PyObject *site_c_init(Site *s, PyObject *args) {
    PyObject *inp, *outs, *mw, *torch;
    if (!PyArg_ParseTuple(args, "OOOLLLiiO", &inp, &outs, &mw, &s->H, &s->E, &s->nsc, &s->mx,
                          &s->xst, &torch))
        return NULL;
    s->ready = 0;
    if (!(s->inp = struct_at(inp, sizeof(mxm_moe_inputs), "mxm_moe_inputs")) ||
        !(s->outs = struct_at(outs, sizeof(mxm_moe_outputs), "mxm_moe_outputs")) ||
        !(s->mw = struct_at(mw, sizeof(mxm_moe_weights), "mxm_moe_weights")))
        return NULL;
    Py_XSETREF(s->keep, PyTuple_Pack(3, inp, outs, mw));
    if (s->keep == NULL) return NULL;
    PyObject **t[] = {&s->ttype,  &s->tdt,   &s->tfp8, &s->tu8, &s->tf32,
                      &s->tempty, &s->tbf16, &s->tcf,  &s->tdev};
    const Py_ssize_t nt = sizeof(t) / sizeof(t[0]);
    if (torch != Py_None && (!PyTuple_Check(torch) || PyTuple_GET_SIZE(torch) != nt)) {
        PyErr_Format(PyExc_TypeError, "c_init: torch must be None or a tuple of %zd", nt);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nt; i++) {
        PyObject *v = torch == Py_None ? NULL : PyTuple_GET_ITEM(torch, i);
        Py_XINCREF(v);
        Py_XSETREF(*t[i], v);
    }
    if (s->ttype != NULL && s->ttype != g_tensor) {
        for (int i = 0; i < N_NAMES; i++) {
            Py_CLEAR(g_tdescr[i]);
            if (i == N_PLAN_FOR) continue;
            PyObject *d = PyObject_GetAttr(s->ttype, g_names[i]);
            if (d == NULL) return NULL;
            if (Py_TYPE(d)->tp_descr_get == NULL)
                Py_CLEAR(d); /* not a descriptor: looked up per call */
            g_tdescr[i] = d;
        }
        Py_INCREF(s->ttype);
        Py_XSETREF(g_tensor, s->ttype);
    }
    s->ready = 1;
    Py_RETURN_NONE;
}

/* c_plan(plan, workspace, workspace_bytes): the plan's pointers (max_tokens: an attribute) */
static PyObject *site_c_plan(Site *s, PyObject *args) {
    PyObject *plan, *ws;
    long long wsb;
    if (!PyArg_ParseTuple(args, "OOL", &plan, &ws, &wsb)) return NULL;
    void *p = PyLong_AsVoidPtr(plan), *w = PyLong_AsVoidPtr(ws);
    if (PyErr_Occurred()) return NULL;
    s->plan = p;
    s->ws = w;
    s->ws_bytes = wsb;
    Py_RETURN_NONE;
}

static int site_traverse(Site *s, visitproc visit, void *arg) {
    Py_VISIT(s->keep);
    Py_VISIT(s->meta);
    PyObject *t[] = {s->ttype,  s->tdt,   s->tfp8, s->tu8, s->tf32,
                     s->tempty, s->tbf16, s->tcf,  s->tdev};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        Py_VISIT(t[i]);
    return 0;
}

static int site_clear(Site *s) {
    s->ready = 0;
    Py_CLEAR(s->keep);
    Py_CLEAR(s->meta);
    PyObject **t[] = {&s->ttype,  &s->tdt,   &s->tfp8, &s->tu8, &s->tf32,
                      &s->tempty, &s->tbf16, &s->tcf,  &s->tdev};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        Py_CLEAR(*t[i]);
    return 0;
}

static void site_dealloc(Site *s) {
    PyObject_GC_UnTrack(s);
    site_clear(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMethodDef site_methods[] = {
    {"call", (PyCFunction)(void (*)(void))site_call, METH_FASTCALL,
     "call(x, logits, bias, x_scale[, the 7 weight arguments]): _fast() in C"},
    {"c_init", (PyCFunction)site_c_init, METH_VARARGS,
     "c_init(inp, outs, mw, H, E, nsc, mx, xst, torch)"},
    {"c_plan", (PyCFunction)site_c_plan, METH_VARARGS, "c_plan(plan, workspace, workspace_bytes)"},
    {NULL, NULL, 0, NULL}};

static PyMemberDef site_members[] = {
    {"max_tokens", T_LONGLONG, offsetof(Site, max_tokens), 0, "tokens the plan covers"},
    {"meta", T_OBJECT, offsetof(Site, meta), 0, "what the function's weights are compared with"},
    {"c_ready", T_INT, offsetof(Site, ready), READONLY, "1 when call() runs here"},
    {NULL, 0, 0, 0, NULL}};

static PyTypeObject SiteType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mxmoe._fastcall.Site",
    .tp_basicsize = sizeof(Site),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C part of _flashinfer._Site (subclassed there).",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)site_dealloc,
    .tp_traverse = (traverseproc)site_traverse,
    .tp_clear = (inquiry)site_clear,
    .tp_methods = site_methods,
    .tp_members = site_members,
};

/* setup(forward_address, python_path, MxmError, ndarray, np.empty, bf16, np_fast, np_fp8, uint8,
 * float32) */
static PyObject *setup(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *fwd, *o[9];
    if (!PyArg_ParseTuple(args, "OOOOOOO!O!OO", &fwd, &o[0], &o[1], &o[2], &o[3], &o[4],
                          &PyDict_Type, &o[5], &PyDict_Type, &o[6], &o[7], &o[8]))
        return NULL;
    void *f = PyLong_AsVoidPtr(fwd);
    if (f == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "setup: NULL forward");
        return NULL;
    }
    if (!PyType_Check(o[2])) {
        PyErr_SetString(PyExc_TypeError, "setup: ndarray must be a type");
        return NULL;
    }
    PyObject **g[] = {&g_python_path, &g_error,  &g_ndarray, &g_empty, &g_bf16,
                      &g_np_fast,     &g_np_fp8, &g_u8,      &g_f32};
    for (int i = 0; i < 9; i++) {
        Py_INCREF(o[i]);
        Py_XSETREF(*g[i], o[i]);
    }
    g_forward = (forward_fn)f;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {{"setup", setup, METH_VARARGS,
                                        "setup(forward_address, python_path, MxmError, ndarray, "
                                        "np.empty, bf16, np_fast, np_fp8, uint8, float32)"},
                                       {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT,
                                    "_fastcall",
                                    "The short path's per-call work in C (see _flashinfer._Site).",
                                    -1,
                                    module_methods,
                                    NULL,
                                    NULL,
                                    NULL,
                                    NULL};

PyMODINIT_FUNC PyInit__fastcall(void) {
    const char *text[N_NAMES] = {"shape",         "dtype",    "is_cpu", "device",
                                 "is_contiguous", "data_ptr", "numel",  "plan_for"};
    for (int i = 0; i < N_NAMES; i++)
        if (!(g_names[i] = PyUnicode_InternFromString(text[i]))) return NULL;
    if (!(s_empty_kw = Py_BuildValue("(ss)", "dtype", "memory_format"))) return NULL;
    if (PyType_Ready(&SiteType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&SiteType);
    if (PyModule_AddObject(m, "Site", (PyObject *)&SiteType) < 0) {
        Py_DECREF(&SiteType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
