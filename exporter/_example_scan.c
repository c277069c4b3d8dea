/* The wire-format scan behind exporter.features.parse_example.
 *
 * parse(blobs, keys) walks serialized tensorflow.Example messages once, in C, and returns for every
 * requested feature key its values over the whole batch, with TensorFlow's checks applied on the way.
 *
 *   blobs : a list of bytes, one serialized Example each
 *   keys  : a tuple of (name: bytes, kind: int, size: int, default) per requested key, in the order TF
 *           checks them (dense keys first). kind is the list the key is read as: 1 bytes_list,
 *           2 float_list, 3 int64_list. size >= 0 makes it a dense key of that many values per
 *           example; default is then None (required) or its size values (float32 / int64 bytes, or a
 *           tuple of bytes). size -1 makes it a list key (var-len, or half of a sparse feature).
 *
 * returns (error, [(values, lengths, indices, width), ...]):
 *   error   : None, or the first failure in example order, then key order, as TF meets it:
 *             (example, key rank or -1, code, kind found, count found) with code 1 undecodable
 *             example, 2 list of another type, 3 required and missing, 4 dense list of another length.
 *             The outputs are then incomplete and must not be used.
 *   values  : bytearray of float32 / int64 values of every example in order (a dense key's defaults
 *             filled in), or for bytes_list a list of bytes objects
 *   lengths : for a list key, bytes of int64 per example: how many values it holds (0 where none)
 *   indices : for a list key, bytearray of int64 [value, 2] pairs (example, position); else None
 *   width   : for a list key, the longest list; else 0
 *
 * spans(data) frames the top-level fields of any message (the gateway cuts a Classify's examples out
 * of its request with it, as views, without the GIL).
 *
 * Only the structure the answer depends on is decoded: Example.features (field 1), its map entries
 * (field 1: key 1, value 2), the Feature oneof (bytes_list 1, float_list 2, int64_list 3) and, for
 * requested keys, the lists' `value` field (1), packed or not. Features nobody asked for are framed,
 * never decoded, as in TensorFlow's fast parser. Merging follows protobuf where TensorFlow does: a
 * message's fields may repeat (concatenated Examples), the last map entry for a key wins, one
 * Feature's lists of one kind concatenate and a list of another kind replaces them (a oneof); and
 * where TF differs from protobuf, TF wins: a later entry whose Feature has no list set does not erase
 * an earlier value.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "float_list values are copied as little-endian IEEE floats"
#endif

#define KIND_BYTES 1
#define KIND_FLOAT 2
#define KIND_INT64 3
#define MAX_DEPTH 64

enum { ERR_UNDECODABLE = 1, ERR_TYPE = 2, ERR_MISSING = 3, ERR_LENGTH = 4 };

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Cursor;

/* A list message body (FloatList, Int64List or BytesList) of the winning Feature of one key. */
typedef struct {
    const uint8_t *start;
    Py_ssize_t len;
} Span;

/* A growable byte buffer. */
typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

typedef struct {
    const char *name;
    Py_ssize_t name_len;
    int want;              /* KIND_* this key is read as */
    Py_ssize_t size;       /* values per example of a dense key; -1 for a list key */
    const char *fill;      /* a dense key's default (numeric), or NULL */
    PyObject *fill_items;  /* a dense bytes key's default (tuple of bytes), or NULL */
    int has_default;
    /* per example */
    int kind;              /* the kind found, 0 for none */
    Span *spans;           /* the list bodies of that kind, in order */
    Py_ssize_t nspans, cap_spans;
    int64_t count;         /* values found in those lists */
    /* over the batch */
    Buf values;            /* numeric values */
    PyObject *strings;     /* bytes values (a list), for KIND_BYTES */
    int64_t *lengths;
    Buf indices;           /* list keys: (example, position) pairs */
    int64_t width;
} Key;

static int read_varint(Cursor *c, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (c->p >= c->end) return -1;
        uint8_t b = *c->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Skips one field's payload of wire type `wt` (after its tag). Groups are skipped to their end. */
static int skip_field(Cursor *c, uint32_t wt, uint64_t field, int depth) {
    uint64_t n;
    switch (wt) {
    case 0:
        return read_varint(c, &n);
    case 1:
        if (c->end - c->p < 8) return -1;
        c->p += 8;
        return 0;
    case 2:
        if (read_varint(c, &n) < 0 || n > (uint64_t)(c->end - c->p)) return -1;
        c->p += n;
        return 0;
    case 5:
        if (c->end - c->p < 4) return -1;
        c->p += 4;
        return 0;
    case 3: {
        if (depth >= MAX_DEPTH) return -1;
        for (;;) {
            uint64_t tag;
            if (read_varint(c, &tag) < 0) return -1;
            uint32_t w = (uint32_t)(tag & 7);
            if (w == 4) return (tag >> 3) == field ? 0 : -1;
            if ((tag >> 3) == 0 || skip_field(c, w, tag >> 3, depth + 1) < 0) return -1;
        }
    }
    default:
        return -1;
    }
}

/* Reads a length-delimited payload into `out`. */
static int read_len(Cursor *c, Cursor *out) {
    uint64_t n;
    if (read_varint(c, &n) < 0 || n > (uint64_t)(c->end - c->p)) return -1;
    out->p = c->p;
    out->end = c->p + n;
    c->p += n;
    return 0;
}

static int add_span(Key *k, const uint8_t *start, Py_ssize_t len) {
    if (k->nspans == k->cap_spans) {
        Py_ssize_t cap = k->cap_spans ? 2 * k->cap_spans : 4;
        Span *s = PyMem_Realloc(k->spans, (size_t)cap * sizeof(Span));
        if (s == NULL) return -2;
        k->spans = s;
        k->cap_spans = cap;
    }
    k->spans[k->nspans].start = start;
    k->spans[k->nspans].len = len;
    k->nspans++;
    return 0;
}

/* The feature of one map entry value (a Feature message): its kind and list bodies, into `tmp`. */
static int scan_feature(Cursor c, Key *tmp) {
    while (c.p < c.end) {
        uint64_t tag;
        if (read_varint(&c, &tag) < 0 || (tag >> 3) == 0) return -1;
        uint32_t wt = (uint32_t)(tag & 7);
        uint64_t field = tag >> 3;
        if (wt == 2 && field >= 1 && field <= 3) {
            Cursor body;
            if (read_len(&c, &body) < 0) return -1;
            int kind = (int)field; /* bytes_list 1, float_list 2, int64_list 3 */
            if (kind != tmp->kind) {  /* another member of the oneof replaces the lists so far */
                tmp->kind = kind;
                tmp->nspans = 0;
            }
            int r = add_span(tmp, body.p, body.end - body.p);
            if (r < 0) return r;
        } else if (skip_field(&c, wt, field, 0) < 0) {
            return -1;
        }
    }
    return 0;
}

static Key *find_key(Key *keys, Py_ssize_t nkeys, const uint8_t *name, Py_ssize_t len) {
    for (Py_ssize_t i = 0; i < nkeys; i++) {
        if (keys[i].name_len == len && memcmp(keys[i].name, name, (size_t)len) == 0) return &keys[i];
    }
    return NULL;
}

/* One map entry (Features.feature): its key and Feature; a requested key takes the Feature's lists.
 * Every Feature is scanned (a tag and a length per list: cheap) before the key is known, since the
 * key field may come after the value. */
static int scan_entry(Cursor c, Key *keys, Py_ssize_t nkeys, Key *tmp) {
    const uint8_t *name = (const uint8_t *)"";
    Py_ssize_t name_len = 0;
    tmp->kind = 0;
    tmp->nspans = 0;
    while (c.p < c.end) {
        uint64_t tag;
        if (read_varint(&c, &tag) < 0 || (tag >> 3) == 0) return -1;
        uint32_t wt = (uint32_t)(tag & 7);
        uint64_t field = tag >> 3;
        if (wt == 2 && (field == 1 || field == 2)) {
            Cursor body;
            if (read_len(&c, &body) < 0) return -1;
            if (field == 1) {
                name = body.p;
                name_len = body.end - body.p;
            } else {
                int r = scan_feature(body, tmp);  /* a repeated value field merges, as in protobuf */
                if (r < 0) return r;
            }
        } else if (skip_field(&c, wt, field, 0) < 0) {
            return -1;
        }
    }
    Key *k = find_key(keys, nkeys, name, name_len);
    if (k == NULL || tmp->kind == 0) return 0;  /* TF: a Feature with no list set leaves an earlier value be */
    k->kind = tmp->kind;
    k->nspans = 0;
    for (Py_ssize_t i = 0; i < tmp->nspans; i++) {
        int r = add_span(k, tmp->spans[i].start, tmp->spans[i].len);
        if (r < 0) return r;
    }
    return 0;
}

static int scan_example(const uint8_t *data, Py_ssize_t size, Key *keys, Py_ssize_t nkeys, Key *tmp) {
    Cursor c = {data, data + size};
    while (c.p < c.end) {
        uint64_t tag;
        if (read_varint(&c, &tag) < 0 || (tag >> 3) == 0) return -1;
        uint32_t wt = (uint32_t)(tag & 7);
        uint64_t field = tag >> 3;
        if (wt == 2 && field == 1) {  /* Example.features: a Features message */
            Cursor features;
            if (read_len(&c, &features) < 0) return -1;
            while (features.p < features.end) {
                uint64_t ftag;
                if (read_varint(&features, &ftag) < 0 || (ftag >> 3) == 0) return -1;
                uint32_t fwt = (uint32_t)(ftag & 7);
                if (fwt == 2 && (ftag >> 3) == 1) {
                    Cursor entry;
                    if (read_len(&features, &entry) < 0) return -1;
                    int r = scan_entry(entry, keys, nkeys, tmp);
                    if (r < 0) return r;
                } else if (skip_field(&features, fwt, ftag >> 3, 0) < 0) {
                    return -1;
                }
            }
        } else if (skip_field(&c, wt, field, 0) < 0) {
            return -1;
        }
    }
    return 0;
}

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more) cap *= 2;
    char *d = PyMem_Realloc(b->data, (size_t)cap);
    if (d == NULL) return -2;
    b->data = d;
    b->cap = cap;
    return 0;
}

static int buf_append(Buf *b, const void *src, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -2;
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static int append_int64(Key *k, uint64_t v) {
    int64_t x = (int64_t)v;  /* int64 values are varints of their two's complement */
    return buf_append(&k->values, &x, 8);
}

/* Reads one list body of the key's found kind: -1 if malformed; its values are kept if the kind is
 * the one the key wants (they are counted either way). */
static int read_list(Key *k, Span s) {
    Cursor c = {s.start, s.start + s.len};
    int keep = k->kind == k->want;
    while (c.p < c.end) {
        uint64_t tag;
        if (read_varint(&c, &tag) < 0 || (tag >> 3) == 0) return -1;
        uint32_t wt = (uint32_t)(tag & 7);
        if ((tag >> 3) != 1) {
            if (skip_field(&c, wt, tag >> 3, 0) < 0) return -1;
            continue;
        }
        if (k->kind == KIND_BYTES) {
            Cursor b;
            if (wt != 2 || read_len(&c, &b) < 0) return -1;
            if (keep) {
                PyObject *item = PyBytes_FromStringAndSize((const char *)b.p, b.end - b.p);
                if (item == NULL) return -2;
                int r = PyList_Append(k->strings, item);
                Py_DECREF(item);
                if (r < 0) return -2;
            }
            k->count++;
        } else if (k->kind == KIND_FLOAT) {
            const uint8_t *p;
            Py_ssize_t n;
            if (wt == 5) {
                if (c.end - c.p < 4) return -1;
                p = c.p;
                n = 1;
                c.p += 4;
            } else if (wt == 2) {
                Cursor b;
                if (read_len(&c, &b) < 0 || (b.end - b.p) % 4) return -1;
                p = b.p;
                n = (b.end - b.p) / 4;
            } else {
                return -1;
            }
            if (keep && buf_append(&k->values, p, n * 4) < 0) return -2;  /* little-endian IEEE */
            k->count += n;
        } else { /* KIND_INT64 */
            uint64_t v;
            if (wt == 0) {
                if (read_varint(&c, &v) < 0) return -1;
                if (keep && append_int64(k, v) < 0) return -2;
                k->count++;
                continue;
            }
            Cursor b;
            if (wt != 2 || read_len(&c, &b) < 0) return -1;
            while (b.p < b.end) {
                if (read_varint(&b, &v) < 0) return -1;
                if (keep && append_int64(k, v) < 0) return -2;
                k->count++;
            }
        }
    }
    return 0;
}

/* The first of TF's checks that key `k` fails on this example, or 0. */
static int check_key(const Key *k) {
    if (k->kind != 0 && k->kind != k->want) return ERR_TYPE;
    if (k->size < 0) return 0;
    if (k->kind == 0) return k->has_default ? 0 : ERR_MISSING;
    return k->count == k->size ? 0 : ERR_LENGTH;
}

/* After the checks: a dense key's default where the example has none; a list key's indices. */
static int finish_key(Key *k, Py_ssize_t e) {
    if (k->size >= 0) {
        if (k->kind != 0) return 0;
        if (k->want != KIND_BYTES) return buf_append(&k->values, k->fill, k->size * (k->want == KIND_FLOAT ? 4 : 8));
        for (Py_ssize_t i = 0; i < k->size; i++) {
            if (PyList_Append(k->strings, PyTuple_GET_ITEM(k->fill_items, i)) < 0) return -2;
        }
        return 0;
    }
    int64_t n = k->kind == k->want ? k->count : 0;
    k->lengths[e] = n;
    if (n > k->width) k->width = n;
    if (buf_reserve(&k->indices, n * 16) < 0) return -2;
    int64_t *out = (int64_t *)(k->indices.data + k->indices.len);
    for (int64_t i = 0; i < n; i++) {
        out[2 * i] = (int64_t)e;
        out[2 * i + 1] = i;
    }
    k->indices.len += n * 16;
    return 0;
}

static void free_keys(Key *keys, Py_ssize_t nkeys) {
    for (Py_ssize_t i = 0; i < nkeys; i++) {
        PyMem_Free(keys[i].spans);
        PyMem_Free(keys[i].values.data);
        PyMem_Free(keys[i].indices.data);
        PyMem_Free(keys[i].lengths);
        Py_XDECREF(keys[i].strings);
    }
    PyMem_Free(keys);
}

static int setup_key(Key *k, PyObject *spec, Py_ssize_t n) {
    PyObject *name, *fill;
    if (!PyArg_ParseTuple(spec, "O!inO", &PyBytes_Type, &name, &k->want, &k->size, &fill)) return -1;
    k->name = PyBytes_AS_STRING(name);
    k->name_len = PyBytes_GET_SIZE(name);
    if (k->want < KIND_BYTES || k->want > KIND_INT64) {
        PyErr_SetString(PyExc_ValueError, "kind must be 1, 2 or 3");
        return -1;
    }
    if (fill != Py_None) {
        if (k->size < 0) {
            PyErr_SetString(PyExc_ValueError, "a list key has no default");
            return -1;
        }
        k->has_default = 1;
        if (k->want == KIND_BYTES) {
            if (!PyTuple_Check(fill) || PyTuple_GET_SIZE(fill) != k->size) {
                PyErr_SetString(PyExc_ValueError, "a bytes default is a tuple of size bytes");
                return -1;
            }
            k->fill_items = fill;
        } else {
            if (!PyBytes_Check(fill) || PyBytes_GET_SIZE(fill) != k->size * (k->want == KIND_FLOAT ? 4 : 8)) {
                PyErr_SetString(PyExc_ValueError, "a numeric default is size float32 or int64 values as bytes");
                return -1;
            }
            k->fill = PyBytes_AS_STRING(fill);
        }
    }
    k->lengths = PyMem_Calloc((size_t)(n ? n : 1), sizeof(int64_t));
    if (k->lengths == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (k->want == KIND_BYTES && (k->strings = PyList_New(0)) == NULL) return -1;
    return 0;
}

static PyObject *outputs(Key *keys, Py_ssize_t nkeys, Py_ssize_t n) {
    PyObject *per_key = PyList_New(nkeys);
    if (per_key == NULL) return NULL;
    for (Py_ssize_t i = 0; i < nkeys; i++) {
        Key *k = &keys[i];
        PyObject *values, *indices;
        if (k->want == KIND_BYTES) {
            values = k->strings;
            Py_INCREF(values);
        } else {
            values = PyByteArray_FromStringAndSize(k->values.data ? k->values.data : "", k->values.len);
        }
        if (k->size >= 0) {
            indices = Py_None;
            Py_INCREF(indices);
        } else {
            indices = PyByteArray_FromStringAndSize(k->indices.data ? k->indices.data : "", k->indices.len);
        }
        if (values == NULL || indices == NULL) {
            Py_XDECREF(values);
            Py_XDECREF(indices);
            Py_DECREF(per_key);
            return NULL;
        }
        /* "N" hands both references over, on failure too. */
        PyObject *item = Py_BuildValue(
            "(Ny#NL)", values, (const char *)k->lengths, n * (Py_ssize_t)sizeof(int64_t), indices, (long long)k->width);
        if (item == NULL) {
            Py_DECREF(per_key);
            return NULL;
        }
        PyList_SET_ITEM(per_key, i, item);
    }
    return per_key;
}

static PyObject *parse(PyObject *self, PyObject *args) {
    PyObject *blobs, *specs;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &blobs, &PyTuple_Type, &specs)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(blobs), nkeys = PyTuple_GET_SIZE(specs);
    Key *keys = PyMem_Calloc((size_t)(nkeys ? nkeys : 1), sizeof(Key));
    Key tmp = {0};
    PyObject *result = NULL, *error = NULL;
    if (keys == NULL) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < nkeys; i++) {
        if (setup_key(&keys[i], PyTuple_GET_ITEM(specs, i), n) < 0) goto done;
    }
    for (Py_ssize_t e = 0; e < n && error == NULL; e++) {
        PyObject *blob = PyList_GET_ITEM(blobs, e);
        for (Py_ssize_t i = 0; i < nkeys; i++) {
            keys[i].kind = 0;
            keys[i].nspans = 0;
            keys[i].count = 0;
        }
        int r = PyBytes_Check(blob)
            ? scan_example((const uint8_t *)PyBytes_AS_STRING(blob), PyBytes_GET_SIZE(blob), keys, nkeys, &tmp)
            : -1;  /* not bytes: not a serialized Example */
        /* Every requested list is read before any check, so an undecodable example is reported as
         * such whatever else is wrong with it. */
        for (Py_ssize_t i = 0; i < nkeys && r == 0; i++) {
            for (Py_ssize_t s = 0; s < keys[i].nspans && r == 0; s++) r = read_list(&keys[i], keys[i].spans[s]);
        }
        if (r == -2) {
            if (!PyErr_Occurred()) PyErr_NoMemory();
            goto done;
        }
        if (r < 0) {
            error = Py_BuildValue("(nniiL)", e, (Py_ssize_t)-1, ERR_UNDECODABLE, 0, 0LL);
            if (error == NULL) goto done;
            break;
        }
        for (Py_ssize_t i = 0; i < nkeys; i++) {
            int code = check_key(&keys[i]);
            if (code) {
                error = Py_BuildValue("(nniiL)", e, i, code, keys[i].kind, (long long)keys[i].count);
                if (error == NULL) goto done;
                break;
            }
        }
        for (Py_ssize_t i = 0; i < nkeys && error == NULL; i++) {
            if (finish_key(&keys[i], e) < 0) {
                if (!PyErr_Occurred()) PyErr_NoMemory();
                goto done;
            }
        }
    }
    PyObject *per_key = outputs(keys, nkeys, n);
    if (per_key == NULL) goto done;
    if (error == NULL) {
        error = Py_None;
        Py_INCREF(error);
    }
    result = Py_BuildValue("(NN)", error, per_key);
    error = NULL;
done:
    Py_XDECREF(error);
    PyMem_Free(tmp.spans);
    free_keys(keys, nkeys);
    return result;
}

/* One pass over the top-level fields of data[0:size]: writes each length-delimited field's (number,
 * payload start, payload end) to `out` (when not NULL, up to `room` triples) and returns how many
 * there are, or -1 if the bytes are not a message. Other wire types (groups too) are skipped. */
static Py_ssize_t scan_spans(const uint8_t *data, Py_ssize_t size, int64_t *out, Py_ssize_t room) {
    Cursor c = {data, data + size};
    Py_ssize_t count = 0;
    while (c.p < c.end) {
        uint64_t tag, n;
        if (read_varint(&c, &tag) < 0 || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff) return -1;
        uint32_t wt = (uint32_t)(tag & 7);
        if (wt != 2) {
            if (skip_field(&c, wt, tag >> 3, 0) < 0) return -1;
            continue;
        }
        if (read_varint(&c, &n) < 0 || n > (uint64_t)(c.end - c.p)) return -1;
        if (out != NULL) {
            if (count >= room) return -1;
            out[3 * count] = (int64_t)(tag >> 3);
            out[3 * count + 1] = c.p - data;
            out[3 * count + 2] = c.p - data + (Py_ssize_t)n;
        }
        c.p += n;
        count++;
    }
    return count;
}

/* spans(data) -> bytes: see the header of exporter/_example_scan.pyi. Both passes run without the
 * GIL (the buffer is held meanwhile): a message of a million fields takes milliseconds, and the
 * event loop of the gateway that calls this from a worker thread keeps running. */
static PyObject *spans(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *data = (const uint8_t *)view.buf;
    Py_ssize_t count, written = -1;
    Py_BEGIN_ALLOW_THREADS
    count = scan_spans(data, view.len, NULL, 0);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (count >= 0) {
        result = PyBytes_FromStringAndSize(NULL, count * 3 * (Py_ssize_t)sizeof(int64_t));
        if (result == NULL) goto done;
        int64_t *out = (int64_t *)PyBytes_AS_STRING(result);  /* nobody else sees it yet */
        Py_BEGIN_ALLOW_THREADS
        written = scan_spans(data, view.len, out, count);
        Py_END_ALLOW_THREADS
    }
    if (written != count || count < 0) {  /* not a message (or a buffer changed under us) */
        Py_CLEAR(result);
        PyErr_SetString(PyExc_ValueError, "not a protobuf message");
    }
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS, "parse(blobs, keys) -> (error, [(values, lengths, indices, width)])"},
    {"spans", spans, METH_O, "spans(data) -> bytes of int64 (number, start, end) per length-delimited field"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "exporter._example_scan",
    .m_doc = "The tf.Example wire scan behind exporter.features.parse_example.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__example_scan(void) { return PyModule_Create(&module); }
