/* bind_nvml.c: the NVML sampler (utilisation, memory, temperature, power per
 * GPU), exposed to Python. */
#include "bind.h"

#include "st_nvml.h"

// --- NVML sampler ---------------------------------------------------------------

static PyObject *mod_nvml_start(PyObject *m, PyObject *args, PyObject *kwargs)
{
    (void)m;
    static char *kwlist[] = {"period_ms", "capacity", NULL};
    unsigned period = ST_NVML_DEFAULT_PERIOD_MS;
    Py_ssize_t capacity = ST_NVML_DEFAULT_CAPACITY;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|In", kwlist, &period, &capacity)) {
        return NULL;
    }
    if (capacity < 1) {
        return PyErr_Format(PyExc_ValueError, "capacity must be >= 1");
    }
    char why[400] = "";
    st_nvml_status status;
    Py_BEGIN_ALLOW_THREADS /* nvmlInit can take hundreds of milliseconds */
    status = st_nvml_start(period, (size_t)capacity, why, sizeof why);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(Ns)", PyBool_FromLong(status == ST_NVML_OK), status == ST_NVML_OK ? "" : why);
}

static PyObject *mod_nvml_stop(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    Py_BEGIN_ALLOW_THREADS /* waits for the sampler's current round */
    st_nvml_stop();
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *optional_u64(int valid, unsigned long long v)
{
    return valid ? PyLong_FromUnsignedLongLong(v) : Py_NewRef(Py_None);
}

/* Append samples[0..n) to list as (t_ns, device, gpu %, memory %, used, total, temperature, power mW)
 * tuples, None for what a sample lacks. Returns 0, or -1 with an exception set. */
static int append_samples(PyObject *list, const st_nvml_sample *samples, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const st_nvml_sample *x = &samples[i];
        PyObject *item = Py_BuildValue(
            "(KINNNNNN)", (unsigned long long)x->t_ns, (unsigned)x->device,
            optional_u64(x->valid & ST_NVML_HAS_UTILIZATION, x->gpu_util_pct),
            optional_u64(x->valid & ST_NVML_HAS_UTILIZATION, x->mem_util_pct),
            optional_u64(x->valid & ST_NVML_HAS_MEMORY, x->mem_used_bytes),
            optional_u64(x->valid & ST_NVML_HAS_MEMORY, x->mem_total_bytes),
            optional_u64(x->valid & ST_NVML_HAS_TEMPERATURE, x->temperature_c),
            optional_u64(x->valid & ST_NVML_HAS_POWER, x->power_mw));
        if (!item || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            return -1;
        }
        Py_DECREF(item);
    }
    return 0;
}

static PyObject *mod_nvml_drain(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    PyObject *list = PyList_New(0);
    st_nvml_sample chunk[256];
    size_t n;
    while (list && (n = st_nvml_drain(chunk, 256)) > 0) {
        if (append_samples(list, chunk, n) < 0) {
            Py_CLEAR(list);
        }
    }
    return list;
}

static PyObject *mod_nvml_latest(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    PyObject *list = PyList_New(0);
    st_nvml_sample newest[ST_NVML_MAX_DEVICES];
    size_t n = st_nvml_latest(newest, ST_NVML_MAX_DEVICES);
    if (list && append_samples(list, newest, n) < 0) {
        Py_CLEAR(list);
    }
    return list;
}

static PyObject *mod_nvml_info(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    char last[200], driver[80];
    int cuda_driver = 0;
    uint64_t errors = st_nvml_errors(last, sizeof last);
    st_nvml_system(driver, sizeof driver, &cuda_driver);
    unsigned count = st_nvml_device_count();
    PyObject *devices = PyList_New(0);
    for (unsigned i = 0; devices && i < count; i++) {
        char name[ST_NVML_NAME_MAX];
        st_nvml_device_facts f;
        memset(&f, 0, sizeof f);
        st_nvml_device_name(i, name, sizeof name);
        st_nvml_device_info(i, &f);
        PyObject *d = Py_BuildValue("{sIsssNsK}", "index", i, "name", name, "compute_capability",
                                    f.cc_major ? PyUnicode_FromFormat("%d.%d", f.cc_major, f.cc_minor)
                                               : Py_NewRef(Py_None),
                                    "total_memory_bytes", (unsigned long long)f.total_memory_bytes);
        if (!d || PyList_Append(devices, d) < 0) {
            Py_XDECREF(d);
            Py_CLEAR(devices);
        } else {
            Py_DECREF(d);
        }
    }
    return Py_BuildValue("{sNsNsKsKsssssNsi}", "running", PyBool_FromLong(st_nvml_running()), "devices",
                         devices, "dropped", (unsigned long long)st_nvml_dropped(), "errors",
                         (unsigned long long)errors, "last_error", last, "driver_version", driver,
                         "pending", PyLong_FromSize_t(st_nvml_pending()), "cuda_driver_version", cuda_driver);
}

PyMethodDef bind_nvml_methods[] = {
    {"nvml_start", (PyCFunction)(void (*)(void))mod_nvml_start, METH_VARARGS | METH_KEYWORDS,
     "nvml_start(period_ms=100, capacity=65536) -> (ok, reason): sample every GPU through NVML."},
    {"nvml_stop", mod_nvml_stop, METH_NOARGS, "Stop the NVML sampler (buffered samples stay)."},
    {"nvml_drain", mod_nvml_drain, METH_NOARGS,
     "Buffered samples: [(t_ns, device, gpu_util_pct, mem_util_pct, mem_used, mem_total,\n"
     "temperature_c, power_mw)], None where NVML could not say."},
    {"nvml_latest", mod_nvml_latest, METH_NOARGS,
     "The newest sample of each device, as nvml_drain's tuples, without draining (for metrics)."},
    {"nvml_info", mod_nvml_info, METH_NOARGS, "Sampler state, devices, driver version, drops, errors."},
    {NULL},
};
