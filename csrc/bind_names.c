/* bind_names.c: the vocabulary every event carries, exposed to Python: interned
 * names (intern, name_of), the stages and outcomes, and the checks the other
 * bindings apply to them. */
#include "bind.h"

#include "st_intern.h"
#include "st_nvtx.h"
#include "st_stage.h"

// --- Names ----------------------------------------------------------------------

int bind_intern(PyObject *s, uint32_t *id)
{
    if (s == Py_None) {
        *id = ST_INTERN_NONE;
        return 0;
    }
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "a span name or detail must be str or None");
        return -1;
    }
    PyObject *bytes = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass");
    if (!bytes) {
        return -1;
    }
    char *data;
    Py_ssize_t len;
    PyBytes_AsStringAndSize(bytes, &data, &len);
    st_intern_status status = st_intern(data, (size_t)len, id);
    if (status == ST_INTERN_OK && *id != ST_INTERN_NONE) {
        st_nvtx_register_name(*id, data);
    }
    Py_DECREF(bytes);
    if (status != ST_INTERN_OK) {
        PyErr_SetString(PyExc_MemoryError, status == ST_INTERN_FULL
                                               ? "StageTrace name table is full"
                                               : "out of memory interning a name");
        return -1;
    }
    return 0;
}

uint64_t bind_detail_payload(uint32_t detail_id)
{
    size_t len;
    const char *s = st_intern_lookup(detail_id, &len);
    if (!s || len == 0 || len > 19) {
        return detail_id;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return detail_id;
        }
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    return v;
}

int bind_check_stage(long stage)
{
    if (stage < 0 || stage >= ST_STAGE_COUNT) {
        PyErr_Format(PyExc_ValueError, "stage %ld is out of range 0..%d", stage,
                     ST_STAGE_COUNT - 1);
        return -1;
    }
    return 0;
}

int bind_check_outcome(long outcome)
{
    if (outcome < 0 || outcome >= ST_OUTCOME_COUNT) {
        PyErr_Format(PyExc_ValueError, "outcome %ld is out of range 0..%d", outcome,
                     ST_OUTCOME_COUNT - 1);
        return -1;
    }
    return 0;
}

// --- Module functions -------------------------------------------------------------

static PyObject *mod_intern(PyObject *m, PyObject *s)
{
    (void)m;
    uint32_t id;
    if (bind_intern(s, &id) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(id);
}

static PyObject *mod_name_of(PyObject *m, PyObject *arg)
{
    (void)m;
    unsigned long id = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    size_t len;
    const char *s = id > UINT32_MAX ? NULL : st_intern_lookup((uint32_t)id, &len);
    if (!s) {
        PyErr_Format(PyExc_KeyError, "no name with id %lu", id);
        return NULL;
    }
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "surrogatepass");
}

PyMethodDef bind_names_methods[] = {
    {"intern", mod_intern, METH_O, "intern(name) -> id; '' and None give 0."},
    {"name_of", mod_name_of, METH_O, "name_of(id) -> name."},
    {NULL},
};

// --- Constants -------------------------------------------------------------------

/* A tuple of n items made by item(i); NULL with an exception set. */
static PyObject *tuple_of(int n, PyObject *(*item)(unsigned))
{
    PyObject *t = PyTuple_New(n);
    for (int i = 0; t && i < n; i++) {
        PyObject *v = item((unsigned)i);
        if (!v) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SetItem(t, i, v);
    }
    return t;
}

static PyObject *stage_name_str(unsigned i)
{
    return PyUnicode_FromString(st_stage_name(i));
}

static PyObject *outcome_name_str(unsigned i)
{
    return PyUnicode_FromString(st_outcome_name(i));
}

static PyObject *stage_colour_int(unsigned i)
{
    return PyLong_FromUnsignedLong(st_stage_colour(i));
}

int bind_names_init(PyObject *m, module_state *st)
{
    (void)st;
    PyObject *stages = tuple_of(ST_STAGE_COUNT, stage_name_str);
    PyObject *outcomes = tuple_of(ST_OUTCOME_COUNT, outcome_name_str);
    PyObject *colours = tuple_of(ST_STAGE_COUNT, stage_colour_int);
    if (!stages || !outcomes || !colours) {
        goto error;
    }
    /* PyModule_AddObjectRef (3.10) leaves the references with us */
    if (PyModule_AddObjectRef(m, "STAGES", stages) < 0 ||
        PyModule_AddObjectRef(m, "OUTCOMES", outcomes) < 0 ||
        PyModule_AddObjectRef(m, "STAGE_COLOURS", colours) < 0) {
        goto error;
    }
    Py_DECREF(stages);
    Py_DECREF(outcomes);
    Py_DECREF(colours);
    return 0;
error:
    Py_XDECREF(stages);
    Py_XDECREF(outcomes);
    Py_XDECREF(colours);
    return -1;
}
