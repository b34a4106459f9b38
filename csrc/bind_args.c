/* bind_args.c: an event's args, from a Python dict to the JSON object text the
 * event buffers keep, serialized once at record time. The walk over Python
 * objects is here; the JSON it writes comes from st_json (strings) and
 * st_jsonw (numbers, literals). Never raises into the caller. */
#include "bind.h"

#include "st_json.h"
#include "st_jsonw.h"
#include "st_stage.h"

static const char unprintable[] = "<unprintable>";
static const char too_deep[] = "<too deep>";

static void write_literal_string(st_sink *out, const char *s)
{
    st_json_write_string(out, s, strlen(s));
}

/* The text of a str (subclasses included: their content, not their __str__),
 * lone surrogates kept as bytes for the escaper to replace. */
static void write_str(st_sink *out, PyObject *s)
{
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(s, &len);
    if (utf8) {
        st_json_write_string(out, utf8, (size_t)len);
        return;
    }
    PyErr_Clear(); /* lone surrogates */
    PyObject *bytes = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass");
    if (bytes) {
        st_json_write_string(out, PyBytes_AsString(bytes), (size_t)PyBytes_Size(bytes));
        Py_DECREF(bytes);
        return;
    }
    PyErr_Clear();
    write_literal_string(out, unprintable);
}

/* str(v) as a JSON string; "<unprintable>" when str() raises. */
static void write_as_str(st_sink *out, PyObject *v)
{
    PyObject *s = PyObject_Str(v);
    if (s) {
        write_str(out, s);
        Py_DECREF(s);
        return;
    }
    PyErr_Clear();
    write_literal_string(out, unprintable);
}

/* An int of any size, in decimal (beyond 64 bits through its hex digits, which
 * Python's int-to-str digit limit does not cover). */
static void write_int(st_sink *out, PyObject *v)
{
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (!overflow && !(x == -1 && PyErr_Occurred())) {
        st_jsonw_i64(out, x);
        return;
    }
    PyErr_Clear();
    PyObject *hex = PyNumber_ToBase(v, 16);
    Py_ssize_t len = 0;
    const char *text = hex ? PyUnicode_AsUTF8AndSize(hex, &len) : NULL;
    st_jsonw_status status = text ? st_jsonw_hex_integer(out, text, (size_t)len) : ST_JSONW_BAD_NUMBER;
    Py_XDECREF(hex);
    PyErr_Clear();
    if (status == ST_JSONW_TOO_BIG) {
        write_literal_string(out, "<int too large>");
    } else if (status != ST_JSONW_OK) {
        write_literal_string(out, unprintable);
    }
}

static void write_value(st_sink *out, PyObject *v, int level);

/* A dict at nesting level `level` (the args object is level 1). Top-level
 * members whose key is in reserved are left out. */
static void write_object(st_sink *out, PyObject *dict, int level, const char *const *reserved)
{
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    int first = 1;
    st_sink_putc(out, '{');
    while (PyDict_Next(dict, &pos, &key, &value)) {
        /* str() of a key or value may run code that changes the dict: hold both */
        Py_INCREF(key);
        Py_INCREF(value);
        size_t mark = out->len;
        if (!first) {
            st_sink_putc(out, ',');
        }
        size_t key_at = out->len;
        if (PyUnicode_Check(key)) {
            write_str(out, key);
        } else {
            write_as_str(out, key);
        }
        int skip = 0;
        for (const char *const *r = reserved; r && *r && !out->failed; r++) {
            size_t n = strlen(*r);
            if (out->len - key_at == n + 2 && memcmp(out->buf + key_at + 1, *r, n) == 0) {
                skip = 1;
            }
        }
        if (skip) {
            out->len = mark;
        } else {
            st_sink_putc(out, ':');
            write_value(out, value, level);
            first = 0;
        }
        Py_DECREF(key);
        Py_DECREF(value);
    }
    st_sink_putc(out, '}');
}

/* A list or tuple at nesting level `level`. */
static void write_array(st_sink *out, PyObject *seq, int level)
{
    int is_list = PyList_Check(seq);
    st_sink_putc(out, '[');
    /* a list may change under str() of an item: re-read its size every time */
    for (Py_ssize_t i = 0; i < (is_list ? PyList_Size(seq) : PyTuple_Size(seq)); i++) {
        PyObject *item = is_list ? PyList_GetItem(seq, i) : PyTuple_GetItem(seq, i);
        if (!item) {
            PyErr_Clear();
            break;
        }
        Py_INCREF(item);
        if (i) {
            st_sink_putc(out, ',');
        }
        write_value(out, item, level);
        Py_DECREF(item);
    }
    st_sink_putc(out, ']');
}

/* v, inside `level` containers. */
static void write_value(st_sink *out, PyObject *v, int level)
{
    if (v == Py_None) {
        st_jsonw_null(out);
    } else if (PyBool_Check(v)) {
        st_jsonw_bool(out, v == Py_True);
    } else if (PyLong_Check(v)) {
        write_int(out, v);
    } else if (PyFloat_Check(v)) {
        st_jsonw_double(out, PyFloat_AsDouble(v));
    } else if (PyUnicode_Check(v)) {
        write_str(out, v);
    } else if (PyBytes_Check(v)) {
        st_json_write_string(out, PyBytes_AsString(v), (size_t)PyBytes_Size(v));
    } else if (PyList_Check(v) || PyTuple_Check(v) || PyDict_Check(v)) {
        if (level >= BIND_ARGS_MAX_DEPTH) {
            write_literal_string(out, too_deep);
        } else if (PyDict_Check(v)) {
            write_object(out, v, level + 1, NULL);
        } else {
            write_array(out, v, level + 1);
        }
    } else {
        write_as_str(out, v);
    }
}

int bind_args_serialize(PyObject *args, unsigned kind, unsigned stage, uint32_t detail_id,
                        bind_args_text *out)
{
    out->text = NULL;
    out->len = 0;
    out->lost = 0;
    if (args == NULL || args == Py_None) {
        return 0;
    }
    if (!PyDict_Check(args)) {
        PyErr_Format(PyExc_TypeError, "args must be a dict or None, not %R",
                     (PyObject *)Py_TYPE(args));
        return -1;
    }
    const char *reserved[3] = {NULL, NULL, NULL};
    if (kind == ST_EVENT_SPAN || kind == ST_EVENT_INSTANT) {
        reserved[0] = "outcome"; /* the event's own members */
        reserved[1] = detail_id ? st_stage_detail_key(stage) : NULL;
    }
    if (st_sink_init(&out->sink, -1, 256) != 0) {
        out->lost = 1;
        return 0;
    }
    PyObject *exc_type, *exc_value, *exc_tb; /* nothing below raises: keep any in flight */
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    write_object(&out->sink, args, 1, reserved);
    PyErr_Restore(exc_type, exc_value, exc_tb);
    if (out->sink.failed) {
        st_sink_free(&out->sink);
        out->lost = 1;
        return 0;
    }
    out->text = out->sink.buf;
    out->len = out->sink.len;
    return 0;
}

void bind_args_free(bind_args_text *a)
{
    if (a->text) {
        st_sink_free(&a->sink);
        a->text = NULL;
    }
}
