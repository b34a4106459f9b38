/* bind_safetensors.c: the checkpoint reader, exposed to Python:
 * read_safetensors_header (only the header is read), the GroupKeys mapping
 * over one component's tensor names, the HeaderHold that keeps the parsed
 * header alive for them, and SafetensorsError. */
#include "bind.h"

#include <stdio.h>

#include "st_jsonscan.h"
#include "st_safetensors.h"
#include "st_sfgroup.h"

// --- Safetensors headers ------------------------------------------------------

/* Raise SafetensorsError(message) with .path .status .offset .detail set. */
static PyObject *safetensors_error(module_state *st, PyObject *path, const st_sf_header *h,
                                   st_sf_status status)
{
    char what[256];
    if (status == ST_SF_OPEN_FAILED || status == ST_SF_READ_FAILED) {
        snprintf(what, sizeof what, "%s: %s", st_sf_status_text(status), strerror(h->err_errno));
    } else if (status == ST_SF_BAD_JSON) {
        snprintf(what, sizeof what, "%s: %s", st_sf_status_text(status),
                 st_json_status_text((st_json_status)h->json_status));
    } else {
        snprintf(what, sizeof what, "%s", st_sf_status_text(status));
    }
    PyObject *msg = h->err_detail[0]
                        ? PyUnicode_FromFormat("%S: byte offset %llu: %s (%s)", path,
                                               (unsigned long long)h->err_offset, what, h->err_detail)
                        : PyUnicode_FromFormat("%S: byte offset %llu: %s", path,
                                               (unsigned long long)h->err_offset, what);
    PyObject *exc = msg ? PyObject_CallFunctionObjArgs(st->safetensors_error, msg, NULL) : NULL;
    Py_XDECREF(msg);
    if (!exc) {
        return NULL;
    }
    PyObject *offset = PyLong_FromUnsignedLongLong(h->err_offset);
    PyObject *detail = PyUnicode_DecodeUTF8(h->err_detail, (Py_ssize_t)strlen(h->err_detail), "replace");
    if (offset && detail && PyObject_SetAttrString(exc, "path", path) == 0 &&
        PyObject_SetAttrString(exc, "offset", offset) == 0 &&
        PyObject_SetAttrString(exc, "detail", detail) == 0) {
        PyObject *name = PyUnicode_FromString(st_sf_status_name(status));
        if (name && PyObject_SetAttrString(exc, "status", name) == 0) {
            PyErr_SetObject(st->safetensors_error, exc);
        }
        Py_XDECREF(name);
    }
    Py_XDECREF(offset);
    Py_XDECREF(detail);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *shape_tuple(const st_sf_header *h, const st_sf_tensor *t)
{
    const uint64_t *dims = st_sf_shape(h, t);
    PyObject *shape = PyTuple_New(t->ndim);
    for (unsigned d = 0; shape && d < t->ndim; d++) {
        PyObject *v = PyLong_FromUnsignedLongLong(dims[d]);
        if (!v) {
            Py_CLEAR(shape);
            break;
        }
        PyTuple_SetItem(shape, d, v);
    }
    return shape;
}

/* [(name, dtype, shape, begin, end)] in file order. */
static PyObject *tensor_list(const st_sf_header *h)
{
    PyObject *tensors = PyList_New((Py_ssize_t)h->n_tensors);
    for (size_t i = 0; tensors && i < h->n_tensors; i++) {
        const st_sf_tensor *t = &h->tensors[i];
        PyObject *item = Py_BuildValue("(NsNKK)",
                                       PyUnicode_DecodeUTF8(h->strings + t->name_off, t->name_len, "strict"),
                                       st_sf_dtype_name(t->dtype), shape_tuple(h, t), (unsigned long long)t->begin,
                                       (unsigned long long)t->end);
        if (!item) {
            Py_CLEAR(tensors);
            break;
        }
        PyList_SetItem(tensors, (Py_ssize_t)i, item);
    }
    return tensors;
}

// --- GroupKeys: one component's tensor names, without a Python object per tensor ---

/* Owns a parsed header and its grouping for the GroupKeys that read them. */
typedef struct {
    PyObject_HEAD
    st_sf_header h;
    st_sfg_result g;
    uint32_t *members; /* tensor indices by group: group k's are members[starts[k] .. starts[k + 1]) */
    size_t *starts;
} HeaderHoldObject;

static void header_hold_dealloc(PyObject *op)
{
    HeaderHoldObject *self = (HeaderHoldObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    st_sf_header_free(&self->h);
    st_sfg_free(&self->g);
    PyMem_Free(self->members);
    PyMem_Free(self->starts);
    PyObject_Free(op);
    Py_DECREF(tp);
}

static PyType_Slot header_hold_slots[] = {
    {Py_tp_dealloc, header_hold_dealloc},
    {Py_tp_doc, (void *)"A parsed safetensors header kept for its GroupKeys."},
    {0, NULL},
};

static PyType_Spec header_hold_spec = {
    .name = "stagetrace._native.HeaderHold",
    .basicsize = sizeof(HeaderHoldObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = header_hold_slots,
};

/* A read-only mapping {name after the group's prefix: shape} over the header:
 * lookups hash the name in C (the reader's name index), shapes are built when
 * asked for, and the names only when iterated. What the classifier asks of a
 * group (a few dozen lookups) costs no Python object per tensor. */
typedef struct {
    PyObject_HEAD
    HeaderHoldObject *hold;
    uint32_t group;
    PyObject *names; /* the names after the prefix, built on first iteration */
} GroupKeysObject;

static void group_keys_dealloc(PyObject *op)
{
    GroupKeysObject *self = (GroupKeysObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    Py_XDECREF(self->names);
    Py_XDECREF(self->hold);
    PyObject_Free(op);
    Py_DECREF(tp);
}

/* The tensor index of key in this group, -1 when absent, -2 with an exception set. */
static long group_keys_find(GroupKeysObject *self, PyObject *key)
{
    Py_ssize_t len;
    const char *rest = PyUnicode_AsUTF8AndSize(key, &len);
    if (!rest) {
        return -2;
    }
    const st_sf_header *h = &self->hold->h;
    const st_sfg_group *group = &self->hold->g.groups[self->group];
    size_t total = group->prefix_len + (size_t)len;
    char stack[512];
    char *full = total <= sizeof stack ? stack : PyMem_Malloc(total ? total : 1);
    if (!full) {
        PyErr_NoMemory();
        return -2;
    }
    memcpy(full, h->strings + h->tensors[group->first].name_off, group->prefix_len);
    memcpy(full + group->prefix_len, rest, (size_t)len);
    long i = st_sf_find(h, full, total);
    if (full != stack) {
        PyMem_Free(full);
    }
    return i >= 0 && self->hold->g.group_of[i] == self->group ? i : -1;
}

static int group_keys_contains(PyObject *op, PyObject *key)
{
    if (!PyUnicode_Check(key)) {
        return 0;
    }
    long i = group_keys_find((GroupKeysObject *)op, key);
    return i == -2 ? -1 : i >= 0;
}

static PyObject *group_keys_getitem(PyObject *op, PyObject *key)
{
    long i = PyUnicode_Check(key) ? group_keys_find((GroupKeysObject *)op, key) : -1;
    if (i == -2) {
        return NULL;
    }
    if (i < 0) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    const HeaderHoldObject *hold = ((GroupKeysObject *)op)->hold;
    return shape_tuple(&hold->h, &hold->h.tensors[i]);
}

static Py_ssize_t group_keys_len(PyObject *op)
{
    GroupKeysObject *self = (GroupKeysObject *)op;
    return (Py_ssize_t)self->hold->g.groups[self->group].n_tensors;
}

/* The names after the prefix, in file order (built once). Borrowed. */
static PyObject *group_keys_names(GroupKeysObject *self)
{
    if (self->names) {
        return self->names;
    }
    const HeaderHoldObject *hold = self->hold;
    size_t begin = hold->starts[self->group], end = hold->starts[self->group + 1];
    uint32_t skip = hold->g.groups[self->group].prefix_len;
    PyObject *names = PyList_New((Py_ssize_t)(end - begin));
    for (size_t k = begin; names && k < end; k++) {
        const st_sf_tensor *t = &hold->h.tensors[hold->members[k]];
        PyObject *name = PyUnicode_DecodeUTF8(hold->h.strings + t->name_off + skip, t->name_len - skip, "strict");
        if (!name) {
            Py_CLEAR(names);
            break;
        }
        PyList_SetItem(names, (Py_ssize_t)(k - begin), name);
    }
    self->names = names;
    return names;
}

static PyObject *group_keys_iter(PyObject *op)
{
    PyObject *names = group_keys_names((GroupKeysObject *)op);
    return names ? PyObject_GetIter(names) : NULL;
}

static PyObject *group_keys_keys(PyObject *op, PyObject *unused)
{
    (void)unused;
    PyObject *names = group_keys_names((GroupKeysObject *)op);
    return names ? PyList_GetSlice(names, 0, PyList_Size(names)) : NULL;
}

/* matching(head, tail): the names (after the prefix) that start with head and end
 * with tail, compared in C: a "#" pattern's candidates without a str per name. */
static PyObject *group_keys_matching(PyObject *op, PyObject *args)
{
    GroupKeysObject *self = (GroupKeysObject *)op;
    const char *head, *tail;
    Py_ssize_t head_len, tail_len;
    if (!PyArg_ParseTuple(args, "s#s#", &head, &head_len, &tail, &tail_len)) {
        return NULL;
    }
    const HeaderHoldObject *hold = self->hold;
    uint32_t skip = hold->g.groups[self->group].prefix_len;
    PyObject *out = PyList_New(0);
    for (size_t k = hold->starts[self->group]; out && k < hold->starts[self->group + 1]; k++) {
        const st_sf_tensor *t = &hold->h.tensors[hold->members[k]];
        const char *name = hold->h.strings + t->name_off + skip;
        size_t len = t->name_len - skip;
        if (len < (size_t)(head_len + tail_len) || memcmp(name, head, (size_t)head_len) != 0 ||
            memcmp(name + len - (size_t)tail_len, tail, (size_t)tail_len) != 0) {
            continue;
        }
        PyObject *str = PyUnicode_DecodeUTF8(name, (Py_ssize_t)len, "strict");
        if (!str || PyList_Append(out, str) < 0) {
            Py_XDECREF(str);
            Py_CLEAR(out);
        } else {
            Py_DECREF(str);
        }
    }
    return out;
}

static PyObject *group_keys_get(PyObject *op, PyObject *args)
{
    PyObject *key, *fallback = Py_None;
    if (!PyArg_ParseTuple(args, "O|O", &key, &fallback)) {
        return NULL;
    }
    long i = PyUnicode_Check(key) ? group_keys_find((GroupKeysObject *)op, key) : -1;
    if (i == -2) {
        return NULL;
    }
    const HeaderHoldObject *hold = ((GroupKeysObject *)op)->hold;
    return i < 0 ? Py_NewRef(fallback) : shape_tuple(&hold->h, &hold->h.tensors[i]);
}

static PyObject *group_keys_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<GroupKeys: %zd names>", group_keys_len(op));
}

static PyMethodDef group_keys_methods[] = {
    {"keys", group_keys_keys, METH_NOARGS, "The names after the group's prefix, in file order."},
    {"get", group_keys_get, METH_VARARGS, "get(name, default=None) -> shape."},
    {"matching", group_keys_matching, METH_VARARGS,
     "matching(head, tail) -> the names that start with head and end with tail."},
    {NULL},
};

static PyType_Slot group_keys_slots[] = {
    {Py_tp_dealloc, group_keys_dealloc},
    {Py_tp_iter, group_keys_iter},
    {Py_tp_repr, group_keys_repr},
    {Py_tp_methods, group_keys_methods},
    {Py_sq_contains, group_keys_contains},
    {Py_mp_subscript, group_keys_getitem},
    {Py_mp_length, group_keys_len},
    {Py_tp_doc, (void *)"{name after a component's prefix: shape}, read-only, over a parsed header."},
    {0, NULL},
};

static PyType_Spec group_keys_spec = {
    .name = "stagetrace._native.GroupKeys",
    .basicsize = sizeof(GroupKeysObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = group_keys_slots,
};

/* Move *h and *g into a new HeaderHold (they are zeroed: nothing left to free),
 * with the tensors listed group by group. */
static HeaderHoldObject *header_hold_new(module_state *st, st_sf_header *h, st_sfg_result *g)
{
    HeaderHoldObject *hold = PyObject_New(HeaderHoldObject, st->header_hold_type);
    if (!hold) {
        return NULL;
    }
    hold->h = *h;
    hold->g = *g;
    memset(h, 0, sizeof *h);
    memset(g, 0, sizeof *g);
    hold->starts = PyMem_Calloc(hold->g.n_groups + 1, sizeof *hold->starts);
    hold->members = PyMem_Malloc((hold->h.n_tensors ? hold->h.n_tensors : 1) * sizeof *hold->members);
    if (!hold->starts || !hold->members) {
        Py_DECREF(hold);
        PyErr_NoMemory();
        return NULL;
    }
    for (size_t i = 0; i < hold->h.n_tensors; i++) { /* counting sort by group, file order kept */
        hold->starts[hold->g.group_of[i] + 1]++;
    }
    for (size_t k = 0; k < hold->g.n_groups; k++) {
        hold->starts[k + 1] += hold->starts[k];
    }
    size_t *next = PyMem_Calloc(hold->g.n_groups ? hold->g.n_groups : 1, sizeof *next);
    if (!next) {
        Py_DECREF(hold);
        PyErr_NoMemory();
        return NULL;
    }
    for (size_t i = 0; i < hold->h.n_tensors; i++) {
        uint32_t k = hold->g.group_of[i];
        hold->members[hold->starts[k] + next[k]++] = (uint32_t)i;
    }
    PyMem_Free(next);
    return hold;
}

/* [(prefix, pattern, keys: GroupKeys {name after the prefix: shape}, tensors,
 * parameters, bytes, dtypes: {dtype: bytes})], one per group of *g; *h and *g
 * move into the GroupKeys' HeaderHold. */
static PyObject *group_list(module_state *st, st_sf_header *h, st_sfg_result *g)
{
    PyObject *groups = PyList_New((Py_ssize_t)g->n_groups);
    HeaderHoldObject *hold = groups ? header_hold_new(st, h, g) : NULL;
    if (!hold) {
        Py_XDECREF(groups);
        return NULL;
    }
    h = &hold->h;
    g = &hold->g;
    for (size_t k = 0; k < g->n_groups; k++) {
        const st_sfg_group *group = &g->groups[k];
        PyObject *dtypes = PyDict_New();
        for (unsigned d = 0; dtypes && d < ST_SFG_DTYPES; d++) {
            PyObject *n = group->dtype_bytes[d] ? PyLong_FromUnsignedLongLong(group->dtype_bytes[d]) : NULL;
            const char *name = st_sf_dtype_name(d);
            int bad = group->dtype_bytes[d] && (!n || PyDict_SetItemString(dtypes, name ? name : "?", n) < 0);
            Py_XDECREF(n);
            if (bad) {
                Py_CLEAR(dtypes);
            }
        }
        GroupKeysObject *keys = PyObject_New(GroupKeysObject, st->group_keys_type);
        if (keys) {
            keys->hold = (HeaderHoldObject *)Py_NewRef(hold);
            keys->group = (uint32_t)k;
            keys->names = NULL;
        }
        PyObject *item = Py_BuildValue(
            "(NiNKKKN)",
            PyUnicode_DecodeUTF8(h->strings + h->tensors[group->first].name_off, group->prefix_len, "strict"),
            group->pattern, (PyObject *)keys, (unsigned long long)group->n_tensors,
            (unsigned long long)group->parameters, (unsigned long long)group->bytes, dtypes);
        if (!item) { /* N released what it had */
            Py_DECREF(hold);
            Py_DECREF(groups);
            return NULL;
        }
        PyList_SetItem(groups, (Py_ssize_t)k, item);
    }
    Py_DECREF(hold); /* the GroupKeys hold it now */
    return groups;
}

static PyObject *header_to_dict(module_state *st, st_sf_header *h, st_sfg_result *g)
{
    /* what the dict needs from h, before group_list moves it */
    unsigned long long header_len = h->header_len, file_size = h->file_size, data_end = h->data_end;
    PyObject *meta = h->has_metadata ? PyDict_New() : Py_NewRef(Py_None);
    PyObject *items = NULL;
    if (!meta) {
        goto error;
    }
    for (size_t i = 0; i < h->n_meta && meta != Py_None; i++) {
        const st_sf_meta *m = &h->meta[i];
        PyObject *k = PyUnicode_DecodeUTF8(h->strings + m->key_off, m->key_len, "strict");
        PyObject *v = PyUnicode_DecodeUTF8(h->strings + m->value_off, m->value_len, "strict");
        int bad = !k || !v || PyDict_SetItem(meta, k, v) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (bad) {
            goto error;
        }
    }
    items = g ? group_list(st, h, g) : tensor_list(h);
    if (!items) {
        goto error;
    }
    return Py_BuildValue("{sNsNsKsKsK}", g ? "groups" : "tensors", items, "metadata", meta, "header_bytes",
                         header_len, "file_size", file_size, "data_bytes", data_end); /* N steals both */
error:
    Py_XDECREF(items);
    Py_XDECREF(meta);
    return NULL;
}

/* The prefix patterns of group_by as UTF-8 C strings; *owner keeps them alive.
 * NULL with an exception set when group_by is not a sequence of str. */
static const char **group_patterns(PyObject *group_by, PyObject **owner, Py_ssize_t *count)
{
    *owner = PySequence_Tuple(group_by);
    if (!*owner) {
        return NULL;
    }
    *count = PyTuple_Size(*owner);
    const char **patterns = PyMem_Calloc(*count ? (size_t)*count : 1, sizeof *patterns);
    if (!patterns) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < *count; i++) {
        patterns[i] = PyUnicode_AsUTF8AndSize(PyTuple_GetItem(*owner, i), NULL);
        if (!patterns[i]) {
            PyMem_Free(patterns);
            return NULL;
        }
    }
    return patterns;
}

static PyObject *mod_read_safetensors_header(PyObject *m, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", "header_cap", "group_by", NULL};
    PyObject *path_bytes, *group_by = Py_None, *owner = NULL, *path = NULL, *r = NULL;
    unsigned long long cap = ST_SF_DEFAULT_HEADER_CAP;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|K$O", kwlist, PyUnicode_FSConverter, &path_bytes, &cap,
                                     &group_by)) {
        return NULL;
    }
    const char **patterns = NULL;
    Py_ssize_t n_patterns = 0;
    if (group_by != Py_None && !(patterns = group_patterns(group_by, &owner, &n_patterns))) {
        Py_DECREF(path_bytes);
        Py_XDECREF(owner);
        return NULL;
    }
    st_sf_header h;
    st_sfg_result g = {0};
    st_sf_status status;
    int grouped = 0;
    const char *cpath = PyBytes_AsString(path_bytes);
    Py_BEGIN_ALLOW_THREADS
    status = st_sf_read(cpath, cap, &h);
    if (status == ST_SF_OK && patterns) {
        grouped = st_sfg_group_tensors(&h, patterns, (size_t)n_patterns, &g) == 0 ? 1 : -1;
    }
    Py_END_ALLOW_THREADS
    if (grouped < 0) {
        PyErr_NoMemory();
    } else if ((path = PyUnicode_DecodeFSDefault(cpath)) != NULL) {
        r = status == ST_SF_OK ? header_to_dict(PyModule_GetState(m), &h, grouped ? &g : NULL)
                               : safetensors_error(PyModule_GetState(m), path, &h, status);
    }
    Py_XDECREF(path);
    Py_DECREF(path_bytes);
    Py_XDECREF(owner);
    PyMem_Free(patterns);
    st_sfg_free(&g);
    st_sf_header_free(&h);
    return r;
}

PyMethodDef bind_safetensors_methods[] = {
    {"read_safetensors_header", (PyCFunction)(void (*)(void))mod_read_safetensors_header,
     METH_VARARGS | METH_KEYWORDS,
     "read_safetensors_header(path, header_cap=100_000_000, *, group_by=None) -> {tensors: [(name,\n"
     "dtype, shape, begin, end)] in file order, metadata, header_bytes, file_size, data_bytes}.\n"
     "Reads only the header; SafetensorsError (with .path .status .offset .detail) for anything\n"
     "malformed. With group_by, a sequence of prefix patterns ('#' a run of digits, '*' any run),\n"
     "'groups' replaces 'tensors': [(prefix, pattern (index, -1 for none), keys: GroupKeys\n"
     "{name after the prefix: shape}, tensors, parameters, bytes, dtypes: {dtype: bytes})], each\n"
     "tensor in the group of the first pattern matching the start of its name."},
    {NULL},
};

int bind_safetensors_init(PyObject *m, module_state *st)
{
    if (bind_add_type(m, &header_hold_spec, &st->header_hold_type) < 0 ||
        bind_add_type(m, &group_keys_spec, &st->group_keys_type) < 0) {
        return -1;
    }
    st->safetensors_error = PyErr_NewExceptionWithDoc(
        "stagetrace._native.SafetensorsError",
        "A .safetensors file that cannot be read; .path, .status, .offset (bytes), .detail.",
        PyExc_ValueError, NULL);
    if (!st->safetensors_error ||
        PyModule_AddObjectRef(m, "SafetensorsError", st->safetensors_error) < 0) {
        return -1;
    }
    return 0;
}
